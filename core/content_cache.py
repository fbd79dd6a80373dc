"""A content-addressed cache of step results in Redis, with single flight.

Entries of one kind live under one key prefix, given by the module that owns them (the
ingestion cache: ``dataset.cache``; the training cache: ``services.trainer.training_cache``).
An entry is any frozen dataclass with the bookkeeping fields (key, created_at, last_hit, hits,
fence) and a ``group`` (what ``latest`` is kept per: a dataset, a model variant). Entries
expire unless hit (sliding TTL).

Single flight: the first of concurrent runs with the same key ``acquire``s the key's fenced
lease (``core.lease``) and does the work; the others ``wait``, woken by pub/sub when the entry
is put or the lease released (or, at the latest, each second, so a lapsed lease is seen). An
entry is put only with the newest fence, so a holder presumed dead cannot overwrite its
successor's entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from typing import Any

import redis

from core.lease import Lease, Leases

# Set the entry only if the writer's fencing token is the newest issued for the key; then tell
# its waiters (the channel ARGV[5]).
_PUT = """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) < fence then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[5], '1')
return 1
"""


class ContentCache:
    """Entries of type ``entry`` under ``prefix`` (``<prefix>entry:<key>``, ``latest:<group>``,
    ``lock:<key>``, ``fence:<key>``, and the channel ``ready:<key>``)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, prefix: str,
                 entry: type[Any]) -> None:
        self._r = client
        self.ttl = ttl_seconds
        self._prefix = prefix
        self._entry = entry
        self._put = client.register_script(_PUT)
        self.leases = Leases(client, prefix + "lock:", fence=prefix + "fence:",
                             fence_ttl=ttl_seconds)

    # entries -------------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        raw = self._r.get(self._prefix + "entry:" + key)
        return self._entry(**json.loads(raw)) if raw else None

    def latest(self, group: str) -> Any:
        """The entry last put for ``group`` (a dataset name, a model variant), if live."""
        key = self._r.get(self._prefix + "latest:" + group)
        return self.get(key.decode()) if key else None

    def put(self, entry: Any) -> bool:
        """Store ``entry`` unless a newer lease holder's fence supersedes it."""
        ok = self._put(
            keys=[self._prefix + "entry:" + entry.key, self.leases.fence_key(entry.key),
                  self._prefix + "latest:" + entry.group],
            args=[json.dumps(asdict(entry)), entry.fence, self.ttl, entry.key,
                  self._prefix + "ready:" + entry.key],  # its waiters are told, by the script
        )
        return bool(ok)

    def touch(self, entry: Any, now: float | None = None) -> Any:
        """Record a hit and slide the TTL."""
        updated = replace(entry, last_hit=now or time.time(), hits=entry.hits + 1)
        with self._r.pipeline(transaction=False) as pipe:  # one round trip
            pipe.set(self._prefix + "entry:" + entry.key, json.dumps(asdict(updated)), ex=self.ttl)
            pipe.expire(self._prefix + "latest:" + entry.group, self.ttl)
            pipe.execute()
        return updated

    def delete(self, key: str) -> None:
        self._r.delete(self._prefix + "entry:" + key)

    def expires_in(self, key: str) -> int:
        """Seconds until the entry expires unless hit (-2 when it is gone)."""
        return int(self._r.ttl(self._prefix + "entry:" + key))

    def entries(self) -> list[Any]:
        """Every live entry, oldest first (one SCAN, values fetched a thousand at a time)."""
        out: list[Any] = []
        names: list[bytes] = []

        def fetch() -> None:
            out.extend(self._entry(**json.loads(raw)) for raw in self._r.mget(names) if raw)
            names.clear()

        for name in self._r.scan_iter(self._prefix + "entry:*", count=1000):
            names.append(name)
            if len(names) >= 1000:
                fetch()
        if names:
            fetch()
        return sorted(out, key=lambda e: e.created_at)

    # single flight -------------------------------------------------------------------------
    def acquire(self, key: str, lease_ms: int = 30_000) -> Lease | None:
        """The key's fenced lease (keep it renewed with a ``core.lease.Renewer`` on
        ``leases``), or None while another run holds it."""
        return self.leases.acquire(key, lease_ms)

    def release(self, lease: Lease) -> None:
        """Let the key go and wake its waiters (they take over, or find the entry)."""
        self.leases.release(lease, tell=(self._prefix + "ready:" + lease.key, "released"))

    def locked(self, key: str) -> bool:
        return self.leases.held(key)

    def wait(self, key: str, timeout: float) -> Any:
        """Block until the entry appears or the lock is gone (holder done or died)."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._prefix + "ready:" + key)
        deadline = time.monotonic() + timeout
        try:
            while True:
                entry = self.get(key)
                if entry is not None or not self.locked(key):
                    return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                # wake on publish; re-check at least every second so an expired lease is seen
                pubsub.get_message(timeout=min(remaining, 1.0))
        finally:
            pubsub.close()
