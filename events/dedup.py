"""Receivers drop duplicates by (source, id), remembered in Redis for a retention window."""

from __future__ import annotations

import hashlib

import redis

from events.envelope import Event


class Deduplicator:
    def __init__(self, client: redis.Redis, ttl_seconds: int, namespace: str = "events") -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._namespace = namespace

    def first_time(self, event: Event) -> bool:
        """True the first time (source, id) is seen within the window; atomic across processes."""
        digest = hashlib.sha256(f"{event.source}\x00{event.id}".encode()).hexdigest()
        key = f"retrain:seen:{self._namespace}:{digest}"
        return bool(self._client.set(key, 1, nx=True, ex=self._ttl))
