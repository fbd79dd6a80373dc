"""The training cache step, as the local runner and ``retrain step check-training`` use it.

``Memo.check`` decides from the cache whether a training may be skipped (a hit is verified and
counted). A miss then ``claim``s the key: the first run to ask holds a lease and trains; any
other run with the same key waits for its entry (single flight). A holder that dies stops
renewing its lease; within ``lease_ms`` a waiter takes over and trains. A holder records the
entry only with the newest fencing token, so a holder presumed dead cannot overwrite its
successor's model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cache_policy import Policy
from core.content_cache import ContentCache
from core.lease import Lease, Renewer
from dataset.store import load_metadata
from repository.digest import model_digest
from services.trainer.options import TrainOptions
from services.trainer.training_cache import (
    TrainingDecision,
    TrainingEntry,
    decide,
    key_parts,
    new_entry,
    training_key,
    verify_model,
)

log = logging.getLogger(__name__)
LEASE_MS = 30_000
CONCURRENT = "hit: trained by a concurrent run with the same key"


@dataclass(frozen=True)
class TrainingCheck:
    model: str
    key: str
    parts: dict[str, Any]
    policy: str
    force: bool
    decision: TrainingDecision


class Memo:
    """One run's use of the training cache (``policy``: ``exact``, ``max-age=…`` or ``off``;
    ``force``: look nothing up, train every model, record the new models)."""

    def __init__(self, cache: ContentCache, policy: Policy, force: bool = False,
                 lease_ms: int = LEASE_MS) -> None:
        self.cache, self.policy, self.force, self.lease_ms = cache, policy, force, lease_ms
        self._renewer = Renewer(cache.leases, lease_ms, name="training-leases")

    @property
    def enabled(self) -> bool:
        return self.policy.kind != "off"

    def explain(self, options: TrainOptions) -> TrainingCheck:
        """The decision for ``options``, changing nothing (``retrain cache explain``)."""
        warm = model_digest(options.warm_start) if options.warm_start else None
        parts = key_parts(options, load_metadata(options.dataset), warm)
        key = training_key(parts)
        looked_up = self.enabled and not self.force
        exact = self.cache.get(key) if looked_up else None
        latest = self.cache.latest(options.model) if looked_up and exact is None else None
        decision = decide(self.policy, self.force, parts, exact, latest, time.time())
        return TrainingCheck(options.model, key, parts, str(self.policy), self.force, decision)

    def check(self, options: TrainOptions) -> TrainingCheck:
        """The workflow's check: a hit is counted (sliding its TTL); an entry that failed
        verification or is too old is dropped, so the training that follows replaces it."""
        check = self.explain(options)
        entry = check.decision.entry
        if entry is not None:
            touched = self.cache.touch(entry)
            return TrainingCheck(check.model, check.key, check.parts, check.policy, check.force,
                                 TrainingDecision(True, check.decision.reason, touched))
        if self.enabled and not self.force and self.cache.get(check.key) is not None:
            self.cache.delete(check.key)
        return check

    # single flight -------------------------------------------------------------------------
    def claim(self, check: TrainingCheck, since: float) -> Lease | TrainingEntry | None:
        """A lease to train ``check`` (kept renewed until ``finish``), or the entry a concurrent
        run recorded since ``since`` (a hit), or None while another run holds the key."""
        lease = self.cache.acquire(check.key, self.lease_ms)
        if lease is None:
            return self._ready(check, since)
        ready = self._ready(check, since)  # the previous holder may have just finished
        if ready is not None:
            self.cache.release(lease)
            return ready
        self.adopt(check, lease)
        return lease

    def _ready(self, check: TrainingCheck, since: float) -> TrainingEntry | None:
        entry = self.cache.get(check.key)
        if entry is None or (check.force and entry.created_at < since):
            return None
        if verify_model(entry) is not None:
            return None
        return self.cache.touch(entry)

    def wait(self, check: TrainingCheck, since: float, timeout: float) -> Lease | TrainingEntry:
        """Block until this run holds the key or a concurrent run's entry is there."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.claim(check, since)
            if got is not None:
                return got
            if time.monotonic() > deadline:
                from workflows.errors import WorkflowError

                raise WorkflowError(f"gave up waiting for a concurrent training of "
                                    f"{check.model} (key {check.key[:12]}…)")
            older = self.cache.wait(check.key, max(0.0, min(deadline - time.monotonic(), 5.0)))
            if older is not None:  # forced: an entry from before is not what we wait for
                time.sleep(1.0)

    def adopt(self, check: TrainingCheck, lease: Lease) -> None:
        """Keep renewing a lease another step took (the cluster's check step, for the TFJob
        the wait step waits on)."""
        self._renewer.add(lease)

    def finish(self, check: TrainingCheck, lease: Lease | None, result: dict[str, Any] | None,
               run_id: str, dataset_uri: str) -> TrainingEntry | None:
        """Record the training's model (``result``: its result.json; None when it failed)
        under the lease's fence, and let the key go."""
        entry = None
        try:
            if result is not None and lease is not None:
                entry = new_entry(check.key, check.parts, result, run_id, dataset_uri,
                                  lease.fence)
                if not self.cache.put(entry):
                    log.warning("%s: a newer holder of key %s… took over; its model is the one "
                                "cached", check.model, check.key[:12])
                    entry = None
        finally:
            if lease is not None:
                self._renewer.discard(lease)
                self.cache.release(lease)
        return entry

    def close(self) -> None:
        """Stop renewing; leases still held lapse (their trainings did not finish)."""
        self._renewer.close(timeout=0)  # a late renewal of a released lease finds it gone


def save_claim(path: Path, check: TrainingCheck, lease: Lease, dataset_uri: str) -> None:
    """What the cluster's wait step needs to record the TFJob's model under this lease."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": check.model, "key": check.key, "parts": check.parts,
                                "policy": check.policy, "force": check.force,
                                "reason": check.decision.reason, "token": lease.token,
                                "fence": lease.fence, "dataset_uri": dataset_uri}))


def load_claim(path: Path) -> tuple[TrainingCheck, Lease, str]:
    claim = json.loads(path.read_text())
    check = TrainingCheck(claim["model"], claim["key"], claim["parts"], claim["policy"],
                          claim["force"], TrainingDecision(False, claim["reason"]))
    return check, Lease(claim["key"], claim["token"], claim["fence"]), claim["dataset_uri"]


@dataclass(frozen=True)
class ModelGcReport:
    dry_run: bool
    removed_models: list[str]
    dropped_entries: list[str]  # keys whose model is gone or altered
    kept_models: int
    freed_bytes: int


def collect_models(cache: ContentCache, runs_dir: Path, protected: set[str],
                   grace_seconds: float = 3600.0, dry_run: bool = False,
                   now: float | None = None) -> ModelGcReport:
    """Drop training entries whose model is gone or altered, then remove trained model
    folders (``<runs>/<run>/<variant>/model``) that no live entry points at, that are not in
    ``protected`` (the champion and its history: rollback needs them) and that were not
    written within the grace period (a training or a judgement may be using them)."""
    now = time.time() if now is None else now
    live, dropped = set(), []
    for entry in cache.entries():
        if verify_model(entry) is None:
            live.add(str(Path(entry.model_uri).resolve()))
        else:
            dropped.append(entry.key)
            if not dry_run:
                cache.delete(entry.key)
    keep = live | {str(Path(uri).resolve()) for uri in protected}
    removed, kept, freed = [], 0, 0
    for folder in sorted(runs_dir.glob("*/*/model")) if runs_dir.is_dir() else []:
        try:
            age = now - max(p.stat().st_mtime for p in (folder, *folder.iterdir()))
        except (OSError, ValueError):
            continue
        if str(folder.resolve()) in keep or age <= grace_seconds:
            kept += 1
            continue
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        removed.append(str(folder))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return ModelGcReport(dry_run, removed, dropped, kept, freed)
