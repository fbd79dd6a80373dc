"""What a run leaves in Redis as it goes: its summary (``retrain:run:<id>``, with every step's
start, end, outcome and reason, kept 30 days, or for as long as its model is served: ``keep``),
the runs by start time (``retrain:runs``) and one timeline entry per step. This module owns
those records: it writes them (a whole summary at once, or one change at a time from the
steps of a cluster's workflow, each in a pod of its own: ``update``), and offers the reads
others need (``get``, ``recent_runs``, ``runs_since``) and closing a run its owner left
``running`` (``fail_if_running``)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from core import timeline
from events import Event
from events.payloads import DatasetUpdated, RunParameters, TrainingRequested
from workflows.source import source_key

log = logging.getLogger(__name__)
RUNS = "retrain:runs"  # run ids by start time
KEPT = 30 * 86400  # seconds a run's summary is kept (unless ``keep`` made it permanent)

# Write a summary: kept KEPT seconds, or for good if ``keep`` made the run's record permanent
# (TTL -1: an existing key without expiry), so that a later write does not bring expiry back.
_SAVE = """
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""


def _key(run_id: str) -> str:
    return f"retrain:run:{run_id}"


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class RunRequest:
    data_uri: str
    parameters: RunParameters = RunParameters()
    trigger: str = "cli"
    event_id: str | None = None
    run_id: str = field(default_factory=new_run_id)
    attempt: int = 1  # > 1: resumes ``resumes``, whose runner died
    resumes: str | None = None
    # what the triggering event said (type, source, time, and for a dataset.updated its
    # digest, files and origin): kept in the run's summary for the lineage of what it served
    event: dict[str, Any] | None = None
    # bursts coalesce (workflows.coalesce): what "the same source" is for this request (None:
    # it never coalesces), and how many queued requests it replaced (their records wait in
    # the list ``coalesce.covers_key(run_id)``, not in the request, which stays small)
    source: str | None = None
    covered: int = 0

    @classmethod
    def from_event(cls, event: Event, defaults: RunParameters | None = None,
                   sender: str | None = None) -> RunRequest:
        """The run a ``dataset.updated`` or ``training.requested`` asks for; the event's own
        parameters win, then ``defaults``, then the built-in ones. ``sender``: who sent the
        event, as whoever received it authenticated it (``core.auth.identity``): an approval
        names it as its approver, and keeps the name its body gave as a note."""
        data = event.data
        if not isinstance(data, (DatasetUpdated, TrainingRequested)):
            raise ValueError(f"{event.type.value} does not request a run")
        trigger = event.type.short
        if isinstance(data, DatasetUpdated):
            trigger += "/" + data.trigger
        params = data.parameters or defaults or RunParameters()
        said: dict[str, Any] = {"id": event.id, "type": event.type.value, "source": event.source,
                                "time": event.time}
        if event.extensions.get("replayof"):  # sent again by `retrain replay`
            said["replayof"] = event.extensions["replayof"]
        if isinstance(data, DatasetUpdated):
            # parameters: what the event itself carried (None: none), what a replay sends again
            said.update(data.model_dump(mode="json", include={
                "digest", "previous_digest", "files", "origin", "trigger", "parameters"}))
        elif data.approves:
            said.update(approves=data.approves, approved_by=sender or data.approved_by,
                        digest=data.digest)
            if sender:
                said["approval_note"] = data.approved_by  # what the body claimed: a note
        return cls(data.uri, params, trigger, event.id, event=said,
                   source=source_key(said, data.uri))

    def to_json(self) -> str:
        return json.dumps({"data_uri": self.data_uri, "parameters": self.parameters.model_dump(),
                           "trigger": self.trigger, "event_id": self.event_id,
                           "run_id": self.run_id, "attempt": self.attempt,
                           "resumes": self.resumes, "event": self.event, "source": self.source,
                           "covered": self.covered})

    @classmethod
    def from_json(cls, raw: str | bytes) -> RunRequest:
        fields = json.loads(raw)
        fields.pop("pending", None)  # a request queued before covers moved out of it
        covered = fields.pop("covers", None)
        return cls(**{**fields, "parameters": RunParameters(**fields["parameters"]),
                      **({"covered": len(covered)} if covered else {})})


@dataclass
class StepRecord:
    name: str
    status: str = "running"
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class RunRecorder:
    def __init__(self, client: redis.Redis, request: RunRequest) -> None:
        self._r = client
        self.summary: dict[str, Any] = {
            "run_id": request.run_id, "trigger": request.trigger, "event_id": request.event_id,
            "data": request.data_uri, "parameters": request.parameters.model_dump(),
            "status": "running", "started_at": time.time(), "steps": [], "models": {},
            "cache": None, "dataset_uri": None, "digest": None, "event": request.event,
            **({"attempt": request.attempt, "resumes": request.resumes} if request.resumes else {}),
            **({"source": request.source} if request.source else {}),
        }
        self.save()
        self._r.zadd(RUNS, {request.run_id: time.time()})

    @classmethod
    def resume(cls, client: redis.Redis, summary: dict[str, Any]) -> RunRecorder:
        """A recorder that goes on writing ``summary`` (a run taken up again: approved)."""
        recorder = cls.__new__(cls)
        recorder._r, recorder.summary = client, summary
        return recorder

    def save(self) -> None:
        save(self._r, self.summary)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        record = StepRecord(name)

        def ended(started_at: float) -> None:
            self.summary["steps"].append(
                {"name": name, "status": record.status, "seconds": record.seconds,
                 "started_at": round(started_at, 3), "ended_at": round(time.time(), 3),
                 **record.detail})
            self.save()
            timeline.record(self._r, "step", name, status=record.status, seconds=record.seconds,
                            run_id=self.summary["run_id"], **record.detail)

        with timed(record, ended):
            yield record


@contextmanager
def timed(step: StepRecord, ended: Callable[[float], None],
          failed: Callable[[BaseException], None] | None = None) -> Iterator[StepRecord]:
    """Time ``step`` and settle its status (``failed`` with the error when the body raises,
    else ``succeeded`` unless the body set another); ``ended`` is then given when it started
    (the recorders write the step there), ``failed`` the error first."""
    started, started_at = time.perf_counter(), time.time()
    try:
        yield step
    except BaseException as exc:
        step.status = "failed"
        step.detail.setdefault("error", str(exc))
        if failed is not None:
            failed(exc)
        raise
    else:
        if step.status == "running":
            step.status = "succeeded"
    finally:
        step.seconds = round(time.perf_counter() - started, 3)
        ended(started_at)


# the record's writes and reads, for whoever needs them -------------------------------------
def save(client: redis.Redis | redis.client.Pipeline, summary: dict[str, Any],
         started_at: float | None = None) -> None:
    """Write a run's summary (kept ``KEPT`` seconds, or for good once ``keep`` said so); with
    ``started_at``, also list the run among the runs by start time (what ``RunRecorder`` does
    as a run starts). ``client`` may be a pipeline, to write many at once."""
    client.eval(_SAVE, 1, _key(summary["run_id"]), json.dumps(summary), KEPT)
    if started_at is not None:
        client.zadd(RUNS, {summary["run_id"]: started_at})


def _summaries(client: redis.Redis, run_ids: list[bytes] | list[str]) -> list[dict[str, Any]]:
    """The summaries of ``run_ids`` in their order, in one round trip (expired ones left out)."""
    if not run_ids:
        return []
    ids = [i.decode() if isinstance(i, bytes) else i for i in run_ids]
    return [json.loads(raw) for raw in client.mget([_key(i) for i in ids]) if raw]


def get(client: redis.Redis, run_id: str) -> dict[str, Any] | None:
    """One run's summary, or None (never run, or older than ``KEPT``)."""
    raw = client.get(_key(run_id))
    return json.loads(raw) if raw else None


@dataclass(frozen=True)
class RunsPage:
    total: int  # runs listed, however old
    offset: int
    runs: list[dict[str, Any]]  # their summaries, newest first


def recent_runs(client: redis.Redis, offset: int = 0, limit: int = 10) -> RunsPage:
    """The newest runs first, ``limit`` of them from ``offset``: two round trips however many
    runs are kept."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(RUNS)
        pipe.zrevrange(RUNS, offset, offset + limit - 1)
        total, ids = pipe.execute()
    return RunsPage(int(total), offset, _summaries(client, ids))


def runs_since(client: redis.Redis, since: float) -> list[dict[str, Any]]:
    """The summaries of the runs started at ``since`` or later, oldest first."""
    return _summaries(client, client.zrangebyscore(RUNS, since, "+inf"))


def keep(client: redis.Redis, run_id: str) -> bool:
    """Keep ``run_id``'s summary for good (no expiry, through every later write): its model
    became a champion version, whose lineage reads it as long as the version is recorded.
    False when no summary of the run is left to keep."""
    kept = bool(client.persist(_key(run_id))) or client.ttl(_key(run_id)) == -1
    if kept:
        log.info("run %s's record is kept: its model is a served version", run_id)
    else:
        log.warning("run %s's model is a served version, but its record is gone (runs are "
                    "kept %d days): its lineage will say so", run_id, KEPT // 86400)
    return kept


def update(client: redis.Redis, run_id: str,
           change: Callable[[dict[str, Any]], dict[str, Any]], create: bool = True) -> dict[str, Any]:
    """Change a run's stored summary atomically: ``change`` is given the summary (a new one,
    started now and listed among the runs, when none is stored and ``create``; else
    ``ValueError``) and returns the summary to write (or raises); done again on the latest
    summary if another writer changed it meanwhile (the steps of a cluster's workflow, each
    in a pod of its own, trainings in parallel). Returns what was written."""
    key = _key(run_id)
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None and not create:
                    raise ValueError(f"no run {run_id} is recorded (or it is older than 30 days)")
                now = time.time()
                summary = json.loads(raw) if raw else {
                    "run_id": run_id, "status": "running", "started_at": now, "steps": [],
                    "models": {}}
                written = change(summary)
                pipe.multi()
                save(pipe, written, started_at=None if raw else now)
                pipe.execute()
                return written
            except redis.WatchError:
                continue


def fail_if_running(client: redis.Redis, run_id: str, reason: str) -> bool:
    """Mark a run left ``running`` (its owner died) as failed with ``reason``, atomically, and
    say so on the timeline; False if it was not running (another process closed it, or it
    ended)."""
    key = _key(run_id)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            raw = pipe.get(key)
            summary = json.loads(raw) if raw else None
            if summary is not None and summary.get("status") != "running":
                return False
            summary = summary or {"run_id": run_id, "steps": [], "models": {}}
            summary.update(status="failed", error=reason, ended_at=time.time())
            pipe.multi()
            save(pipe, summary)
            pipe.execute()
        except redis.WatchError:
            return False
    timeline.record(client, "run", "run", run_id=run_id, status="failed", error=reason)
    return True


def approve_blocked(client: redis.Redis, run_id: str, approval: dict[str, Any],
                    status: str = "running") -> dict[str, Any]:
    """Approve a ``blocked`` run, atomically (two approvals never both take it): its status
    becomes ``status`` (``running``: it trains now, in place; ``approved``: another run,
    ``approval["resumed_as"]``, trains in its place) and ``approval`` (who, when, the checks
    overruled) is kept in its summary and on the timeline. Returns the summary; raises
    ``ValueError`` saying why the run cannot be approved."""
    def change(summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("status") != "blocked":
            raise ValueError(f"run {run_id} is {summary.get('status')}, not blocked: "
                             "only a run the data gate blocked can be approved")
        return {**{k: v for k, v in summary.items() if k != "error"}, "status": status,
                "approval": approval}

    summary = update(client, run_id, change, create=False)
    timeline.record(client, "run", "approve", run_id=run_id, by=approval.get("by"))
    return summary


# coalesced runs (workflows.coalesce) -----------------------------------------------------------
def create_if_absent(client: redis.Redis, summary: dict[str, Any]) -> bool:
    """Write ``summary`` only if its run has no record yet (a run that started keeps its
    own); lists it among the runs. False when one was there."""
    written = client.set(_key(summary["run_id"]), json.dumps(summary), ex=KEPT, nx=True)
    if written:
        client.zadd(RUNS, {summary["run_id"]: float(summary.get("started_at") or time.time())})
        timeline.record(client, "run", "run", run_id=summary["run_id"], status=summary["status"],
                        error=summary.get("reason"))
    return bool(written)


def cover_all(client: redis.Redis, covering: str, summaries: list[dict[str, Any]]) -> None:
    """In one transaction: each of ``summaries`` (``coalesced`` records naming ``covering``)
    written if its run has no record (the trigger died before writing it), and each stored
    ``coalesced`` record pointed at ``covering`` (its replacer was replaced in turn)."""
    keys = [_key(s["run_id"]) for s in summaries]
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                stored = pipe.mget(keys)
                pipe.multi()
                created = []
                for summary, raw in zip(summaries, stored):
                    kept = json.loads(raw) if raw else None
                    if kept is None:
                        created.append(summary)
                        save(pipe, summary, float(summary.get("started_at") or time.time()))
                    elif kept.get("status") == "coalesced" and kept.get("covered_by") != covering:
                        save(pipe, {**kept, "covered_by": covering})
                pipe.execute()
                break
            except redis.WatchError:
                continue
    for summary in created:
        timeline.record(client, "run", "run", run_id=summary["run_id"], status=summary["status"],
                        error=summary.get("reason"))


def repoint(client: redis.Redis, run_id: str, covered_by: str) -> None:
    """A ``coalesced`` run now covered by ``covered_by`` (its replacer was replaced in turn)."""
    def change(summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("status") != "coalesced" or summary.get("covered_by") == covered_by:
            return summary
        return {**summary, "covered_by": covered_by}

    try:
        update(client, run_id, change, create=False)
    except ValueError:
        log.warning("run %s is covered by %s but has no record to say so", run_id, covered_by)


def end_coalesced(client: redis.Redis, run_id: str, covered_by: str, reason: str) -> None:
    """End a run ``coalesced``, covered by ``covered_by`` (a cluster's Workflow that found a
    newer change of its source noted when it got the source's mutex)."""
    now = round(time.time(), 3)

    def change(summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, "status": "coalesced", "covered_by": covered_by, "reason": reason,
                "error": reason,
                "ended_at": summary.get("ended_at") or now,
                "seconds": round(now - float(summary.get("started_at") or now), 3)}

    update(client, run_id, change)
    timeline.record(client, "run", "run", run_id=run_id, status="coalesced", error=reason)


def add_covers(client: redis.Redis, run_id: str, entries: tuple[dict[str, Any], ...]) -> None:
    """List ``entries`` (``{run_id, event_id, time, digest}``) among the runs ``run_id``
    covers, each once."""
    def change(summary: dict[str, Any]) -> dict[str, Any]:
        have = list(summary.get("covers") or [])
        known = {c["run_id"] for c in have}
        return {**summary, "covers": have + [e for e in entries if e["run_id"] not in known]}

    update(client, run_id, change)
