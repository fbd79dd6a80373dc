"""A run on a cluster keeps the record a local run keeps, written a step at a time.

The local runner holds its run's summary in memory and saves it as it goes
(``workflows.record.RunRecorder``). On a cluster each step of the WorkflowTemplate is a pod of
its own (``retrain step plan|check-cache|ingest|validate|check-training|wait-training``), and
the trainings run in parallel, so each step changes the stored summary in one atomic update
(``record.update``): the plan step starts it (trigger, parameters, the triggering event as its
source said it), each later step appends its step record under the local runner's names with
its details (``fingerprint``, ``check_cache``, ``ingest`` with ``units``, ``validate`` with the
report as ``summary["validation"]``, ``train:<model>`` and the model's outcome in
``summary["models"]``), and the last training to end sets the run's status, as the local
runner does once its trainings have ended. The run id is the Workflow's name.

What no step can know is said by the Workflow's exit handler (``retrain step finish``): each
planned training left without an outcome (its TFJob never created, its wait killed) is told
failed and recorded so (``unended``), and a run still ``running`` once its Workflow ended
otherwise than Succeeded (a step's pod killed, the Workflow's deadline) ends ``failed``
(``ended_by_workflow``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis

from core import timeline
from events.payloads import RunParameters
from workflows import record, steps
from workflows.record import RunRecorder, RunRequest

if TYPE_CHECKING:  # the wait step's pod has 128 MiB: it imports none of these
    from dataset.cache import CacheEntry
    from dataset.fingerprint import Fingerprint
    from dataset.ingest import IngestResult
    from services.trainer.training_cache import TrainingEntry
    from workflows.steps import CacheCheck
    from workflows.validate import Report

log = logging.getLogger(__name__)
TRIGGER = "workflow"  # a run submitted without an event (argo submit by hand)
RUNNER = "workflow"  # who runs it: its Workflow (no lease of a local runner says it lives)


def request_of(run_id: str, data_uri: str, parameters: RunParameters, event: str = "",
               event_id: str = "", sender: str | None = None) -> RunRequest:
    """The run a Workflow was submitted for: the triggering CloudEvent (``event``, its JSON
    as the Sensor passes it on, checked as ``POST /events`` checks it) gives the trigger and
    what its source said, as ``RunRequest.from_event`` gives them to the local runner;
    ``sender`` is who the cluster authenticated it as. Without an event the trigger is
    ``workflow``. Raises ``EventError`` naming every problem of a bad event."""
    from events.codec import STRUCTURED, decode

    if not event.strip():
        return RunRequest(data_uri, parameters, TRIGGER, event_id or None, run_id)
    [found] = decode({"content-type": STRUCTURED}, event.encode())
    return replace(RunRequest.from_event(found, parameters, sender), run_id=run_id,
                   data_uri=data_uri, parameters=parameters)


def start(client: redis.Redis, request: RunRequest) -> dict[str, Any]:
    """The run's record, begun: what the plan step writes (again, if Argo runs it again:
    the runs a coalesced Workflow listed as covered meanwhile are kept)."""
    kept = record.get(client, request.run_id) or {}
    summary = RunRecorder(client, request).summary
    if kept.get("covers"):
        record.add_covers(client, request.run_id, tuple(kept["covers"]))
        summary = record.get(client, request.run_id) or summary
    return summary


def trigger_of(client: redis.Redis, run_id: str, approves: str = "") -> str:
    """What triggered a run, as its plan recorded it (an approval is a person's: manual)."""
    if approves:
        return "training.requested"
    return str((record.get(client, run_id) or {}).get("trigger") or TRIGGER)


@dataclass
class Step(record.StepRecord):
    """What a step records: its outcome and details (a ``StepRecord``), and the summary's
    fields it sets (a dict merged into the stored one: ``models``, ``cache``)."""

    summary: dict[str, Any] = field(default_factory=dict)


class WorkflowRun:
    """One Workflow's run record, written by its steps. ``fatal`` steps (all but a
    training's) end the run ``failed`` when they fail: the DAG starts nothing after them."""

    def __init__(self, client: redis.Redis, run_id: str) -> None:
        self._r, self.run_id = client, run_id

    def summary(self) -> dict[str, Any] | None:
        """The run's record as stored (None: no step recorded it)."""
        return record.get(self._r, self.run_id)

    @contextmanager
    def step(self, name: str, *, fatal: bool = True) -> Iterator[Step]:
        """Time the step and record it, as ``RunRecorder.step`` does; a step that raises is
        recorded ``failed`` with the error (and, ``fatal``, so is the run)."""
        def failed(exc: BaseException) -> None:
            if fatal:
                step.summary.update(status="failed", error=str(exc))

        step = Step(name)
        with record.timed(step, lambda started_at: self.record(step, step.seconds, started_at),
                          failed):
            yield step

    def record(self, step: Step, seconds: float, started_at: float) -> dict[str, Any]:
        """Append ``step`` to the stored summary with its changes, in one atomic update; the
        run ends when the step ends it, or when every planned training has an outcome."""
        entry = {"name": step.name, "status": step.status, "seconds": seconds,
                 "started_at": round(started_at, 3), "ended_at": round(time.time(), 3),
                 **step.detail}

        ended: list[bool] = []  # this step ended the run (the change's last try says)

        def change(summary: dict[str, Any]) -> dict[str, Any]:
            changed = {"trigger": TRIGGER, **summary, "runner": RUNNER,
                       **{k: _merged(summary.get(k), v) for k, v in step.summary.items()},
                       "steps": [*(summary.get("steps") or []), entry]}
            if changed.get("status") == "running":
                changed.update(_trainings_ended(changed, validated=step.name == "validate"))
            ended[:] = [changed.get("status") != "running" and summary.get("status") == "running"]
            if ended[0]:
                changed.update(ended_at=round(time.time(), 3), seconds=round(
                    time.time() - float(summary.get("started_at") or time.time()), 3))
            return changed

        written = record.update(self._r, self.run_id, change)
        timeline.record(self._r, "step", step.name, status=step.status, seconds=seconds,
                        run_id=self.run_id, **step.detail)
        if ended[0]:
            timeline.record(self._r, "run", "run", run_id=self.run_id,
                            status=written["status"], seconds=written.get("seconds"),
                            error=written.get("error"))
        return written


def _merged(stored: Any, new: Any) -> Any:
    return {**stored, **new} if isinstance(stored, dict) and isinstance(new, dict) else new


def _trainings_ended(summary: dict[str, Any], validated: bool) -> dict[str, Any]:
    """The run's end once each planned training has an outcome (as the local runner's
    ``_train``): ``failed`` if any did not train, else ``succeeded``; a run that trains
    nothing ends once validated; nothing before."""
    if summary.get("parameters") is None:  # not planned here: what it trains is unknown
        return {}
    planned = list(summary["parameters"].get("models") or [])
    outcomes = summary.get("models") or {}
    if not planned:
        return {"status": "succeeded"} if validated else {}
    if any(m not in outcomes for m in planned):
        return {}
    failed = [m for m in planned if outcomes[m].get("status") != "trained"]
    if not failed:
        return {"status": "succeeded"}
    return {"status": "failed", "error": "training failed: " + ", ".join(
        f"{m} ({outcomes[m].get('reason') or 'no reason given'})" for m in failed)}


def best_effort(run: WorkflowRun, step: Step, seconds: float, started_at: float) -> None:
    """Record ``step`` where losing the record must not fail the step (a training's outcome,
    hours into a wait: the trainer has told the selector already)."""
    try:
        run.record(step, seconds, started_at)
    except redis.RedisError as exc:
        log.warning("could not record %s of run %s: %s", step.name, run.run_id, exc)


# what each step records, as the local runner's steps record it ---------------------------------
def fingerprinted(step: Step, fp: Fingerprint) -> None:
    step.detail.update(digest=fp.digest, files=len(fp.files), bytes=fp.total_bytes)
    step.summary["digest"] = fp.digest


def cache_checked(step: Step, check: CacheCheck) -> None:
    decision = check.decision
    step.detail.update(hit=decision.hit, reason=decision.reason, policy=check.policy,
                       key=check.key, parts=check.parts)
    step.summary["cache"] = {"hit": decision.hit, "reason": decision.reason,
                             "policy": check.policy, "key": check.key}


def ingested(step: Step, entry: CacheEntry, reason: str, result: IngestResult | None) -> None:
    """The ingest step: ``skipped`` when the dataset was there (a cache hit, or a concurrent
    run's ingestion), every unit then reused; else the units it wrote and those it reused."""
    step.detail.update(steps.ingest_detail(entry, reason, result))
    step.summary["dataset_uri"] = entry.dataset_uri
    if result is None:
        step.status = "skipped"
        step.summary["cache"] = {"hit": True, "reason": reason}


def validated(step: Step, report: Report, dataset_uri: str, deferred: str | None = None) -> None:
    """The validate step: the verdict, the report kept as ``summary["validation"]``; a run
    ``deferred`` (too small a change) ends so, saying why."""
    step.detail.update(report.step_detail())
    step.summary.update(validation=report.to_dict(), dataset_uri=dataset_uri)
    step.status = report.step_status() or step.status
    if deferred:
        step.summary.update(status="deferred", error=deferred, reason=deferred)


def training(model: str) -> Step:
    return Step(f"train:{model}")


def cached_training(step: Step, model: str, entry: TrainingEntry, reason: str) -> None:
    """A training-cache hit: no TFJob, the recorded model is the run's."""
    step.status = "cached"
    step.detail.update(val_accuracy=entry.val_accuracy, cached=True, reason=reason,
                       key=entry.key, trained_by=entry.run_id)
    step.summary["models"] = {model: {
        "status": "trained", "cached": True, "seconds": 0.0, "val_accuracy": entry.val_accuracy,
        "model_uri": entry.model_uri, "reason": reason}}


def trained(step: Step, model: str, seconds: float, result: dict[str, Any] | None,
            key: str | None, reason: str | None) -> None:
    """A TFJob that succeeded, with what its trainer's result says."""
    step.status = "succeeded"
    step.detail.update(val_accuracy=(result or {}).get("val_accuracy"), cached=False,
                       reason=reason, key=key)
    step.summary["models"] = {model: {
        "status": "trained", "seconds": seconds,
        "val_accuracy": (result or {}).get("val_accuracy"),
        "model_uri": (result or {}).get("model_uri")}}


def training_failed(step: Step, model: str, seconds: float, reason: str) -> None:
    step.status = "failed"
    step.detail.update(error=reason, cached=False)
    step.summary["models"] = {model: {"status": "failed", "seconds": seconds, "reason": reason}}


# the exit handler: what a Workflow that ended left unsaid ---------------------------------------
NOT_TRAINING = ("blocked", "deferred", "coalesced")  # a run that ended so started no training


def unended(summary: dict[str, Any] | None) -> list[str]:
    """The planned trainings of a run that have no outcome yet, once its trainings could
    have started (validated, and not blocked, deferred or coalesced): what the exit handler
    reports. A run that never got that far sent nothing for any training: no round waits for
    it. Pure."""
    if not summary or summary.get("parameters") is None or (
            summary.get("status") in NOT_TRAINING):
        return []
    steps_ = summary.get("steps") or []
    started = any(s.get("name") == "validate" and s.get("status") not in ("failed", "blocked")
                  for s in steps_) or any(str(s.get("name")).startswith("train:") for s in steps_)
    outcomes = summary.get("models") or {}
    return [m for m in summary["parameters"].get("models") or [] if started and m not in outcomes]


def ended_by_workflow(run: WorkflowRun, status: str) -> dict[str, Any] | None:
    """End a run whose record is still ``running`` once its Workflow has ended otherwise
    than Succeeded (a step's pod killed, the deadline): ``failed``, saying how its Workflow
    ended. A run already ended, or one whose Workflow succeeded, is left as it is."""
    kept = run.summary()
    if kept is None or kept.get("status") != "running" or status == "Succeeded":
        return None
    why = f"the workflow ended {status} before the run did"
    step = Step("workflow", "failed", detail={"error": why},
                summary={"status": "failed", "error": why})
    return run.record(step, 0.0, time.time())
