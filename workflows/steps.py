"""The retrain workflow's steps: plain typed functions the local runner calls and the hera
definition wraps. Each takes plain inputs and returns a frozen value."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from core.cache_policy import Policy
from core.content_cache import ContentCache
from core.lease import Renewer
from dataset import idx
from dataset import ingest as ingestion
from dataset.cache import CacheEntry, Decision, cache_key, decide
from dataset.fingerprint import Fingerprint, StatCache, fingerprint
from dataset.layout import IdxPair, discover, resolve_root
from dataset.store import clean_temporaries, load_metadata, verify
from workflows.errors import WorkflowError

__all__ = ["resolve_root"]  # re-exported: the runner's and the step commands' first call

LEASE_MS = 30_000


def fingerprint_step(root: Path, state_dir: Path) -> Fingerprint:
    import hashlib

    cache_file = state_dir / f"statcache-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.bin"
    return fingerprint(root, StatCache(cache_file))


def ingestion_params(shard_size: int = ingestion.SHARD_SIZE) -> dict[str, object]:
    return {"shard_size": shard_size}


def record_count(root: Path) -> int:
    """Training plus test records, from IDX headers and image counts (no data is decoded)."""
    total = 0
    for unit in discover(root).units:
        if isinstance(unit, IdxPair):
            total += idx.image_count(root / unit.images)
        else:
            total += len(unit.images)
    return total


def key_for(fp: Fingerprint) -> str:
    """The cache key of ingesting the dataset fingerprinted as ``fp`` with this code."""
    return cache_key(fp.digest, ingestion.CODE_VERSION, ingestion_params())


@dataclass(frozen=True)
class CacheCheck:
    key: str
    policy: str
    decision: Decision
    parts: dict[str, object]  # what the key was derived from


def explain_cache(
    cache: ContentCache, root: Path, fp: Fingerprint, policy: Policy, dataset: str = "fashion-mnist"
) -> CacheCheck:
    """The cache decision for ``fp`` under ``policy``, changing nothing (no hit recorded, no
    entry replaced): what ``retrain cache explain`` shows."""
    return _explain(cache, root, fp, policy, dataset)[0]


def _explain(
    cache: ContentCache, root: Path, fp: Fingerprint, policy: Policy, dataset: str
) -> tuple[CacheCheck, CacheEntry | None]:
    """The decision, and the entry stored under its key (None if there is none)."""
    params = ingestion_params()
    key = key_for(fp)
    latest = cache.latest(dataset) if policy.kind == "min-change" else None
    new_records = record_count(root) if latest is not None else None
    stored = cache.get(key)
    decision = decide(
        policy, fp.digest, stored, latest,
        lambda e: verify(e.dataset_uri), time.time(), new_records,
    )
    parts = {"digest": fp.digest, "code_version": ingestion.CODE_VERSION, "params": params}
    return CacheCheck(key, str(policy), decision, parts), stored


def check_cache(
    cache: ContentCache, root: Path, fp: Fingerprint, policy: Policy, dataset: str = "fashion-mnist"
) -> CacheCheck:
    """The workflow's cache step: decides, records a hit (sliding the TTL), and drops an entry
    that failed verification or is too old so the ingestion that follows replaces it."""
    check, stored = _explain(cache, root, fp, policy, dataset)
    decision = check.decision
    if decision.hit and decision.entry is not None:
        decision = Decision(True, decision.reason, cache.touch(decision.entry))
    elif stored is not None:  # as read for the decision: a miss costs one round trip, not two
        cache.delete(check.key)
    return CacheCheck(check.key, check.policy, decision, check.parts)


@dataclass(frozen=True)
class IngestOutcome:
    entry: CacheEntry
    ingested: bool  # False when a concurrent run did it and we waited for its result
    reason: str
    result: ingestion.IngestResult | None


def ingest_step(
    cache: ContentCache, root: Path, store: Path, fp: Fingerprint, key: str,
    dataset: str = "fashion-mnist", wait_timeout: float = 3600.0, lease_ms: int = LEASE_MS,
) -> IngestOutcome:
    """Ingest once per key across concurrent runs (single flight with a renewed lease: if the
    holder dies, its lease lapses within ``lease_ms`` and a waiter takes over)."""
    deadline = time.monotonic() + wait_timeout
    while True:
        lease = cache.acquire(key, lease_ms)
        if lease is not None:
            break
        entry = cache.wait(key, max(0.0, deadline - time.monotonic()))
        if entry is not None:
            return IngestOutcome(cache.touch(entry), False,
                                 "hit: ingested by a concurrent run with the same key", None)
        if time.monotonic() > deadline:
            raise WorkflowError(f"gave up waiting for a concurrent ingestion of key {key[:12]}…")
    renewer = Renewer(cache.leases, lease_ms, name="ingestion-lease")
    renewer.add(lease)
    try:
        existing = cache.get(key)  # the previous holder may have finished just before we got in
        if existing is not None and verify(existing.dataset_uri) is None:
            return IngestOutcome(cache.touch(existing), False,
                                 "hit: ingested by a concurrent run with the same key", None)
        clean_temporaries(store)  # leftovers of a crashed (e.g. SIGKILLed) ingestion
        result = ingestion.ingest(root, store, fp, dataset_key=key)
        now = time.time()
        entry = CacheEntry(
            key=key, digest=fp.digest, dataset_uri=result.dataset_uri, records=result.records,
            per_class=result.per_class, created_at=now, last_hit=now, hits=0,
            fence=lease.fence, dataset=dataset,
        )
        if not cache.put(entry):
            raise WorkflowError(f"lease on {key[:12]}… was lost to a newer holder; not recording")
        return IngestOutcome(entry, True, "ingested", result)
    finally:
        renewer.close(timeout=0)  # a late renewal of a released lease finds it gone
        renewer.discard(lease)
        cache.release(lease)


def pin_first(store: Path, dataset_uri: str) -> None:
    """After an ingestion: the first dataset's test split becomes the pinned evaluation set
    (``dataset.pinned``), unless one is pinned already."""
    from dataset import pinned

    pinned.pin_first(store, dataset_uri)


def ingest_detail(entry: CacheEntry, reason: str,
                  result: ingestion.IngestResult | None) -> dict[str, object]:
    """What an ingest step records (the local runner's and a cluster's alike): the records,
    why, and which units it wrote and which it reused; with no ``result`` (a cache hit, or a
    concurrent run's ingestion) every unit was reused."""
    detail: dict[str, object] = {"records": entry.records, "reason": reason}
    if result is None:
        units = [str(u["id"]) for u in load_metadata(entry.dataset_uri)["units"]]  # type: ignore[union-attr]
        detail["units"] = {"ingested": [], "reused": units}
    else:
        detail.update(reused_units=result.reused_units, new_units=result.new_units,
                      units={"ingested": list(result.units_ingested),
                             "reused": list(result.units_reused)})
    return detail
