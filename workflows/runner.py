"""The local runner: the retrain workflow's steps on this machine, trainings in parallel processes.

Every step's start, end, outcome and reason is recorded in Redis (``retrain:run:<id>``), so
``retrain status`` and later steps can see why something ran or was skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from core import timeline
from core.cache_policy import Policy
from core.errors import RetrainError
from core.settings import Settings
from dataset.cache import CacheEntry, ingestion_cache
from dataset.errors import DatasetValidationError
from dataset.fingerprint import Fingerprint
from dataset.ingest import IngestResult
from events import Event, EventType, make_event
from events.payloads import (
    IngestionCompleted,
    IngestionFailed,
    IngestionSkipped,
)
from workflows import steps
from workflows.record import RunRecorder, RunRequest, new_run_id

__all__ = ["LocalRunner", "RunRequest", "new_run_id"]  # RunRequest: where callers look for it

log = logging.getLogger(__name__)
SOURCE = "retrain/runner"
Emit = Callable[[Event], None]


def ingestion_skipped(run_id: str, digest: str, entry: CacheEntry, reason: str) -> Event:
    return make_event(EventType.INGESTION_SKIPPED,
                      IngestionSkipped(run_id=run_id, digest=digest,
                                       dataset_uri=entry.dataset_uri, reason=reason),
                      source=SOURCE, id=f"{run_id}/ingestion")


def ingestion_completed(run_id: str, digest: str, entry: CacheEntry,
                        result: IngestResult) -> Event:
    return make_event(EventType.INGESTION_COMPLETED,
                      IngestionCompleted(run_id=run_id, digest=digest,
                                         dataset_uri=entry.dataset_uri, records=entry.records,
                                         seconds=round(result.seconds, 3),
                                         reused_shards=result.reused_units,
                                         new_shards=result.new_units),
                      source=SOURCE, id=f"{run_id}/ingestion")


def ingestion_failed(run_id: str, data_uri: str, exc: DatasetValidationError) -> Event:
    return make_event(EventType.INGESTION_FAILED,
                      IngestionFailed(run_id=run_id, uri=data_uri, problems=exc.problems),
                      source=SOURCE, id=f"{run_id}/ingestion")


class LocalRunner:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        redis_url: str,
        emit: Emit,
        console: Console | None = None,
    ) -> None:
        self._settings = settings
        self._r = client
        self._redis_url = redis_url
        self._emit = emit
        self._console = console or Console(stderr=True)
        self._cache = ingestion_cache(client, settings.cache_ttl_seconds)

    def run(self, request: RunRequest) -> dict[str, Any]:
        """Run the workflow; returns its summary (also stored in Redis). The run's lease is held
        meanwhile, so a run whose process dies is found and closed (``workflows.queue``)."""
        from workflows.lease import run_lease

        with run_lease(self._r, request.run_id):
            return self._run(request)

    def _run(self, request: RunRequest) -> dict[str, Any]:
        rec = RunRecorder(self._r, request)
        started = time.perf_counter()
        params = request.parameters
        try:
            policy = Policy.parse(params.cache_policy)
            with rec.step("fingerprint") as step:
                root = steps.resolve_root(request.data_uri)
                fp = steps.fingerprint_step(root, self._settings.home / "statcache")
                step.detail.update(digest=fp.digest, files=len(fp.files), bytes=fp.total_bytes)
                rec.summary["digest"] = fp.digest
            with rec.step("check_cache") as step:
                check = steps.check_cache(self._cache, root, fp, policy)
                step.detail.update(hit=check.decision.hit, reason=check.decision.reason,
                                   policy=check.policy, key=check.key, parts=check.parts)
                rec.summary["cache"] = {"hit": check.decision.hit, "reason": check.decision.reason,
                                        "policy": check.policy, "key": check.key}
            entry = self._ingest(request, root, fp, check, rec)
            rec.summary["dataset_uri"] = entry.dataset_uri
            rec.save()
            if params.models:
                from workflows.fanout import Trainings

                Trainings(self._settings, self._r, self._redis_url, self._emit, self._console,
                          request.run_id, params, rec, entry.dataset_uri).run()
            failed = [m for m, r in rec.summary["models"].items() if r["status"] != "trained"]
            rec.summary["status"] = "failed" if failed else "succeeded"
        except (RetrainError, OSError) as exc:  # a step's own error, or the file system's
            rec.summary["status"] = "failed"
            rec.summary["error"] = str(exc)
            if not isinstance(exc, RetrainError):
                log.exception("run %s failed", request.run_id)
        finally:
            rec.summary["seconds"] = round(time.perf_counter() - started, 3)
            rec.save()
            timeline.record(self._r, "run", "run", run_id=request.run_id,
                            status=rec.summary["status"], seconds=rec.summary["seconds"],
                            error=rec.summary.get("error"))
        return rec.summary

    def _ingest(self, request: RunRequest, root: Path, fp: Fingerprint,
                check: steps.CacheCheck, rec: RunRecorder) -> CacheEntry:
        """The ingest step: skipped on a hit, else run once per key; emits what happened."""
        with rec.step("ingest") as step:
            if check.decision.hit and check.decision.entry is not None:
                entry, reason, result = check.decision.entry, check.decision.reason, None
            else:
                try:
                    outcome = steps.ingest_step(self._cache, root, self._settings.store_dir, fp,
                                                check.key)
                except DatasetValidationError as exc:
                    step.detail.update(problems=list(exc.problems))
                    self._emit(ingestion_failed(request.run_id, request.data_uri, exc))
                    raise
                entry, reason, result = outcome.entry, outcome.reason, outcome.result
            step.detail.update(records=entry.records, reason=reason)
            if result is None:  # a cache hit, or a concurrent run with the same key ingested it
                step.status = "skipped"
                rec.summary["cache"].update(hit=True, reason=reason)
            else:
                step.detail.update(reused_units=result.reused_units, new_units=result.new_units)
        if result is None:
            event = ingestion_skipped(request.run_id, fp.digest, entry, reason)
        else:
            event = ingestion_completed(request.run_id, fp.digest, entry, result)
        self._emit(event)
        return entry
