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

    def _key(self, event: Event) -> str:
        digest = hashlib.sha256(f"{event.source}\x00{event.id}".encode()).hexdigest()
        return f"retrain:seen:{self._namespace}:{digest}"

    def first_time(self, event: Event) -> bool:
        """True the first time (source, id) is seen within the window; atomic across processes."""
        return bool(self._client.set(self._key(event), 1, nx=True, ex=self._ttl))

    def seen(self, event: Event) -> bool:
        """Whether (source, id) was remembered as handled; changes nothing."""
        return bool(self._client.exists(self._key(event)))

    def forget(self, event: Event) -> None:
        """Undo ``first_time`` for an event that could not be taken after all, so that the
        sender's retry is not dropped as a duplicate."""
        self._client.delete(self._key(event))

    def remember(self, event: Event) -> None:
        """Record (source, id) as handled: for receivers that mark an event only once its
        handling is done, so one cut short is handled again when it is redelivered."""
        self._client.set(self._key(event), 1, ex=self._ttl)
