"""What "the same source" is for a run: the key bursts coalesce by (``workflows.coalesce``).

The watcher keeps one local copy per Git repository and branch (a clone, checked out in place
at each revision) and per bucket and prefix (a mirror), watches a folder in place, and sends
that copy's path as the event's ``uri``; the event's ``origin`` says where the change came
from. So successive revisions of a branch share one URI, and the key is the repository and
branch for Git, the bucket and its mirror (whose path stands for the prefix, which the origin
does not name) for a bucket, the folder for a folder, else the data URI. A
``training.requested`` never coalesces: it has no key.

What runs one at a time on a cluster is the data path (``lock_name``): every run of the
watcher's copy, and a person's ``training.requested`` for the same path, share one mutex,
whatever coalesces. Pure.
"""

from __future__ import annotations

import hashlib
from typing import Any


def source_key(event: dict[str, Any] | None, data_uri: str) -> str | None:
    """What "the same source" is for a run's triggering event (as ``RunRequest.event`` keeps
    it); None for an event that never coalesces (anything but a ``dataset.updated``)."""
    if not event or not str(event.get("type", "")).endswith("dataset.updated"):
        return None
    origin = event.get("origin") or {}
    uri = data_uri.removeprefix("file://").rstrip("/") or "/"
    kind = origin.get("kind")
    if kind == "git" and origin.get("repository") and origin.get("ref"):
        return f"git:{origin['repository']}#{str(origin['ref']).removeprefix('refs/heads/')}"
    if kind == "bucket" and origin.get("bucket"):
        return f"bucket:{origin['bucket']}@{uri}"
    if kind == "folder" and origin.get("folder"):
        return f"folder:{str(origin['folder']).rstrip('/') or '/'}"
    return f"uri:{uri}"


def lock_name(data_uri: str) -> str:
    """The Argo mutex of a run's data path: one run works on a path at a time (the watcher's
    runs of a source, whose copy is that path, and a person's requests for it alike)."""
    return mutex_name("path:" + (data_uri.removeprefix("file://").rstrip("/") or "/"))


def mutex_name(key: str) -> str:
    """An Argo mutex name for a source key (a valid name whatever the key holds)."""
    return "retrain-source-" + hashed(key)


def hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]
