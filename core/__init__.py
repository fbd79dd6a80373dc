"""The ground floor: settings, errors, HTTP helpers, Redis access and the timeline.

Every other package stands on this one; it imports nothing of ours.
"""
