"""The content-based step cache, in Redis.

Key: hash of (dataset digest, ingestion code version, ingestion parameters). Value: where
the ingested dataset is, record counts, created-at, last-hit and hits. Entries expire
unless hit (sliding TTL). A single-flight lease (with a fencing token) makes concurrent
runs with the same key ingest once; waiters are woken by pub/sub, not by sleep loops.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from blake3 import blake3

from dataset.errors import DatasetError

PREFIX = "retrain:cache:"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CachePolicyError(DatasetError):
    """A cache policy that cannot be parsed: a usage error."""

    exit_code = 2


@dataclass(frozen=True)
class Policy:
    """``exact``, ``max-age=DURATION`` or ``min-change=FRACTION`` (ingestion); ``exact``,
    ``max-age=DURATION`` or ``off`` (training: ``TRAINING``)."""

    kind: str = "exact"
    max_age: float | None = None
    min_change: float | None = None

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...] = ("exact", "max-age", "min-change")) -> Policy:
        text = text.strip()
        name, _, value = text.partition("=")
        if name not in kinds or (name in ("exact", "off")) != ("=" not in text):
            forms = [kind + _GRAMMAR[kind] for kind in kinds]
            expected = ", ".join(forms[:-1]) + " or " + forms[-1]
            raise CachePolicyError(f"unknown cache policy {text!r} (expected {expected})")
        if name in ("exact", "off"):
            return cls(name)
        if name == "max-age":
            match = _DURATION.match(value)
            if not match:
                raise CachePolicyError(
                    f"cache policy {text!r}: max-age needs a duration like 30s, 15m, 2h or 1d"
                )
            return cls("max-age", max_age=float(match[1]) * _UNITS[match[2]])
        if name == "min-change":
            try:
                fraction = float(value)
            except ValueError:
                fraction = -1.0
            if not 0 < fraction < 1:
                raise CachePolicyError(
                    f"cache policy {text!r}: min-change needs a fraction between 0 and 1"
                )
        return cls("min-change", min_change=fraction)

    def __str__(self) -> str:
        if self.kind == "max-age":
            return f"max-age={self.max_age:g}s"
        if self.kind == "min-change":
            return f"min-change={self.min_change:g}"
        return self.kind


TRAINING = ("exact", "max-age", "off")  # the training cache's policies (Policy.parse kinds)
_GRAMMAR = {"exact": "", "off": "", "max-age": "=DURATION", "min-change": "=FRACTION"}


@dataclass(frozen=True)
class CacheEntry:
    key: str
    digest: str
    dataset_uri: str
    records: dict[str, int]
    per_class: dict[str, list[int]]
    created_at: float
    last_hit: float
    hits: int
    fence: int
    dataset: str = "fashion-mnist"

    @property
    def group(self) -> str:
        return self.dataset


@dataclass(frozen=True)
class Decision:
    hit: bool
    reason: str
    entry: CacheEntry | None


def cache_key(digest: str, code_version: str, params: dict[str, Any]) -> str:
    """Pure: the content key of an ingestion."""
    material = json.dumps(
        {"digest": digest, "code": code_version, "params": params}, sort_keys=True
    )
    return blake3(material.encode()).hexdigest()


def ago(seconds: float, short: bool = False) -> str:
    """``12 min ago`` (or ``12m`` when ``short``)."""
    if seconds < 90:
        value, unit = f"{seconds:.0f}", "s"
    elif seconds < 5400:
        value, unit = f"{seconds / 60:.0f}", "m" if short else "min"
    else:
        value, unit = f"{seconds / 3600:.1f}", "h"
    return f"{value}{unit}" if short else f"{value} {unit} ago"


def decide(
    policy: Policy,
    digest: str,
    exact: CacheEntry | None,
    latest: CacheEntry | None,
    verify: Callable[[CacheEntry], str | None],
    now: float,
    new_records: int | None = None,
) -> Decision:
    """Pure apart from ``verify``: whether ingestion may be skipped, and why."""
    if exact is not None:
        if policy.kind == "max-age" and now - exact.created_at > (policy.max_age or 0):
            return Decision(
                False, f"miss: entry for digest {digest[:8]}… is older than {policy}", None
            )
        problem = verify(exact)
        if problem:
            return Decision(False, f"miss: cached dataset failed verification ({problem})", None)
        return Decision(
            True,
            f"hit: same content digest {digest[:8]}…, ingested {ago(now - exact.created_at)}",
            exact,
        )
    if policy.kind == "min-change" and latest is not None and new_records is not None:
        old = sum(latest.records.values())
        change = abs(new_records - old) / max(old, 1)
        if change < (policy.min_change or 0):
            problem = verify(latest)
            if problem is None:
                return Decision(
                    True,
                    f"hit: records changed by {change:.1%} (< {policy.min_change:.0%}), "
                    f"reusing ingestion of {latest.digest[:8]}…",
                    latest,
                )
        return Decision(
            False, f"miss: records changed by {change:.1%} (min-change {policy.min_change:.0%})",
            None,
        )
    return Decision(False, f"miss: no ingestion of content digest {digest[:8]}… in the cache", None)


# Set the entry only if the writer's fencing token is the newest issued for the key.
_PUT = """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) < fence then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
return 1
"""
# Release the lease only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class Lease:
    key: str
    token: str
    fence: int


class ContentCache:
    """Entries of one kind under one key prefix: ingestions (``CacheEntry``, the default) or,
    with another ``prefix`` and ``entry``, any frozen dataclass with the same bookkeeping fields
    (key, created_at, last_hit, hits, fence) and a ``group`` (what ``latest`` is kept per)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, prefix: str = PREFIX,
                 entry: type[Any] = CacheEntry) -> None:
        self._r = client
        self.ttl = ttl_seconds
        self._prefix = prefix
        self._entry = entry
        self._put = client.register_script(_PUT)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

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
            keys=[self._prefix + "entry:" + entry.key, self._prefix + "fence:" + entry.key,
                  self._prefix + "latest:" + entry.group],
            args=[json.dumps(asdict(entry)), entry.fence, self.ttl, entry.key],
        )
        if ok:
            self._r.publish(self._prefix + "ready:" + entry.key, "1")
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
        token = uuid.uuid4().hex
        if not self._r.set(self._prefix + "lock:" + key, token, nx=True, px=lease_ms):
            return None
        fence = int(self._r.incr(self._prefix + "fence:" + key))
        self._r.expire(self._prefix + "fence:" + key, self.ttl)
        return Lease(key, token, fence)

    def renew(self, lease: Lease, lease_ms: int = 30_000) -> bool:
        return bool(self._renew(keys=[self._prefix + "lock:" + lease.key], args=[lease.token, lease_ms]))

    def release(self, lease: Lease) -> None:
        self._release(keys=[self._prefix + "lock:" + lease.key], args=[lease.token])
        self._r.publish(self._prefix + "ready:" + lease.key, "released")

    def locked(self, key: str) -> bool:
        return bool(self._r.exists(self._prefix + "lock:" + key))

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
