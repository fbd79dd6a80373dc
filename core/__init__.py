"""The ground floor: settings, errors, HTTP helpers and API keys, Redis access, the timeline,
and the mechanisms every floor above shares (a lease, retry with backoff, a content cache and
its policy, durations, TensorFlow's start).

Every other package stands on this one; it imports nothing of ours.
"""
