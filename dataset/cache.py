"""The ingestion cache: a dataset is ingested once per content key.

Key: hash of (dataset digest, ingestion code version, ingestion parameters). Value: where
the ingested dataset is, record counts, created-at, last-hit and hits. The entries live in a
``core.content_cache.ContentCache`` under ``retrain:cache:`` (sliding TTL; a fenced lease
makes concurrent runs with the same key ingest once); ``decide`` says whether an ingestion
may be skipped under a ``core.cache_policy.Policy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from blake3 import blake3

from core.cache_policy import Policy
from core.content_cache import ContentCache
from core.durations import ago

PREFIX = "retrain:cache:"


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


def ingestion_cache(client: redis.Redis, ttl_seconds: int) -> ContentCache:
    """The ingestion cache: ``CacheEntry``s under ``retrain:cache:``."""
    return ContentCache(client, ttl_seconds, prefix=PREFIX, entry=CacheEntry)
