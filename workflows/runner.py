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
from dataset.store import verify
from events import Event, EventType, make_event
from events.payloads import (
    DatasetRejected,
    IngestionCompleted,
    IngestionFailed,
    IngestionSkipped,
    RunParameters,
)
from workflows import steps, validate
from workflows.blocked import keep_approval
from workflows.errors import ApprovalError
from workflows.record import RunRecorder, RunRequest, new_run_id

__all__ = ["ApprovalError", "LocalRunner", "RunRequest", "new_run_id"]  # RunRequest: where callers look for it

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


def dataset_rejected(run_id: str, dataset_uri: str, report: validate.Report) -> Event:
    return make_event(EventType.DATASET_REJECTED,
                      DatasetRejected(run_id=run_id, digest=report.digest, dataset_uri=dataset_uri,
                                      reference=report.reference, checks=report.checks),
                      source=SOURCE, id=f"{run_id}/validation")


def ingestion_failed(run_id: str, data_uri: str, exc: DatasetValidationError) -> Event:
    return make_event(EventType.INGESTION_FAILED,
                      IngestionFailed(run_id=run_id, uri=data_uri, problems=exc.problems),
                      source=SOURCE, id=f"{run_id}/ingestion")


def _check_approved(client: redis.Redis, request: RunRequest, digest: str) -> None:
    """A run that approves a blocked one trains only on the content that was approved; the
    blocked run then ends ``approved``, naming who approved it and this run."""
    from workflows import record

    said = request.event or {}
    if not said.get("approves"):
        return
    approved = said.get("digest")
    if approved and approved != digest:
        raise ApprovalError(f"the data at {request.data_uri} changed since run {said['approves']} "
                            f"was approved (digest {digest[:12]}…, approved {approved[:12]}…); "
                            "validate it again")
    blocked = record.get(client, said["approves"])
    if blocked is None:
        raise ApprovalError(f"run {said['approves']} cannot be approved: it is not recorded")
    keep_approval(client, blocked, said.get("approved_by") or "", request.run_id,
                  said.get("approval_note") or "")


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
        self._covering(request, rec)
        started = time.perf_counter()
        params = request.parameters
        try:
            policy = Policy.parse(params.cache_policy)
            with rec.step("fingerprint") as step:
                root = steps.resolve_root(request.data_uri)
                fp = steps.fingerprint_step(root, self._settings.home / "statcache")
                step.detail.update(digest=fp.digest, files=len(fp.files), bytes=fp.total_bytes)
                rec.summary["digest"] = fp.digest
                _check_approved(self._r, request, fp.digest)
            with rec.step("check_cache") as step:
                check = steps.check_cache(self._cache, root, fp, policy)
                step.detail.update(hit=check.decision.hit, reason=check.decision.reason,
                                   policy=check.policy, key=check.key, parts=check.parts)
                rec.summary["cache"] = {"hit": check.decision.hit, "reason": check.decision.reason,
                                        "policy": check.policy, "key": check.key}
            entry = self._ingest(request, root, fp, check, rec)
            rec.summary["dataset_uri"] = entry.dataset_uri
            rec.save()
            verdict = self.validate(request.run_id, entry.dataset_uri, params.validation, rec)
            if verdict in ("blocked", "deferred"):
                return rec.summary
            if verdict in ("pass", "warn"):  # the first data the gate let through is pinned
                steps.pin_first(self._settings.store_dir, entry.dataset_uri)
            self._train(request.run_id, params, rec, entry.dataset_uri)
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

    def approve(self, run_id: str, by: str, note: str = "") -> dict[str, Any]:
        """Resume a blocked run: its trainings run on the dataset it validated, with
        validation ``warn``; ``by`` (who approved) and ``note`` are kept with the run."""
        from workflows import record
        from workflows.lease import run_lease

        summary = record.get(self._r, run_id)
        dataset_uri = (summary or {}).get("dataset_uri")
        problem = verify(dataset_uri) if dataset_uri else "it has no ingested dataset"
        if summary is not None and summary.get("status") == "blocked" and problem:
            raise ApprovalError(f"run {run_id} cannot be resumed: {problem}; run it again")
        untrainable = ((summary or {}).get("validation") or {}).get("untrainable")
        if untrainable:
            raise ApprovalError(f"run {run_id} cannot be approved: {untrainable}")
        overruled = [c["name"] for c in ((summary or {}).get("validation") or {}).get("checks", [])
                     if c["status"] == "block"]
        try:
            summary = record.approve_blocked(self._r, run_id, {
                "by": by, "at": time.time(), "overruled": overruled,
                **({"note": note} if note else {})})
        except ValueError as exc:
            raise ApprovalError(str(exc)) from None
        validate.remember_approved(self._r, str(dataset_uri))
        log.warning("run %s approved by %s: trains despite %s", run_id, by, ", ".join(overruled))
        params = RunParameters(**{**summary["parameters"], "validation": "warn"})
        rec = RunRecorder.resume(self._r, summary)
        started = time.perf_counter()
        with run_lease(self._r, run_id):
            try:
                if self.validate(run_id, str(dataset_uri), "warn", rec, defer=False) == "warn":
                    steps.pin_first(self._settings.store_dir, str(dataset_uri))
                self._train(run_id, params, rec, str(dataset_uri))
            except (RetrainError, OSError) as exc:
                rec.summary.update(status="failed", error=str(exc))
            finally:
                rec.summary["seconds"] = round(rec.summary.get("seconds", 0)
                                               + time.perf_counter() - started, 3)
                rec.save()
                timeline.record(self._r, "run", "run", run_id=run_id,
                                status=rec.summary["status"], seconds=rec.summary["seconds"])
        return rec.summary

    def validate(self, run_id: str, dataset_uri: str, mode: str, rec: RunRecorder,
                 defer: bool = True) -> str:
        """The validate step: the data gate's report kept with the run; a blocked run ends
        ``blocked`` (with every failed check in its error) and says so in an event; with
        ``defer`` (not an approval), a run adding fewer new images than the minimum change
        ends ``deferred``, saying why."""
        with rec.step("validate") as step:
            inputs = validate.inputs_for(self._r, self._settings, dataset_uri)
            report = validate.validate(self._r, self._settings, inputs, mode)
            step.detail.update(report.step_detail())
            step.status = report.step_status() or step.status
        rec.summary["validation"] = report.to_dict()
        if report.status == "blocked":
            rec.summary["status"] = "blocked"
            rec.summary["error"] = report.blocked_message()
            self._emit(dataset_rejected(run_id, dataset_uri, report))
            return report.status
        deferred = defer and validate.deferral(self._settings, report, rec.summary["trigger"],
                                     RunParameters(**rec.summary["parameters"]).force)
        if deferred:
            rec.summary.update(status="deferred", error=deferred, reason=deferred)
            log.info("run %s %s", run_id, deferred)
            return "deferred"
        return report.status

    def _covering(self, request: RunRequest, rec: RunRecorder) -> None:
        """A run that replaced queued ones: every run it covers is recorded ``coalesced``
        naming it (a record the trigger could not write is written now: ``RunQueue.put``),
        and its summary lists them."""
        from workflows import coalesce

        if request.source is None:
            return
        covers = coalesce.cover(self._r, request.run_id)
        if covers:
            rec.summary["covers"] = covers
            rec.save()

    def _train(self, run_id: str, params: RunParameters, rec: RunRecorder,
               dataset_uri: str) -> None:
        if params.models:
            from workflows.fanout import Trainings

            Trainings(self._settings, self._r, self._redis_url, self._emit, self._console,
                      run_id, params, rec, dataset_uri).run()
        failed = [m for m, r in rec.summary["models"].items() if r["status"] != "trained"]
        rec.summary["status"] = "failed" if failed else "succeeded"

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
            step.detail.update(steps.ingest_detail(entry, reason, result))
            if result is None:  # a cache hit, or a concurrent run with the same key ingested it
                step.status = "skipped"
                rec.summary["cache"].update(hit=True, reason=reason)
        if result is None:
            event = ingestion_skipped(request.run_id, fp.digest, entry, reason)
        else:
            event = ingestion_completed(request.run_id, fp.digest, entry, result)
        self._emit(event)
        return entry
