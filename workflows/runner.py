"""The local runner: the retrain workflow's steps on this machine, trainings in parallel processes.

Every step's start, end, outcome and reason is recorded in Redis (``retrain:run:<id>``), so
``retrain status`` and later steps can see why something ran or was skipped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core import timeline
from core.children import dies_with_us
from core.settings import Settings
from dataset.cache import CacheEntry, ContentCache, Policy
from dataset.errors import DatasetError, DatasetValidationError
from dataset.fingerprint import Fingerprint
from dataset.ingest import IngestResult
from events import Event, EventType, make_event
from events.payloads import (
    DatasetUpdated,
    IngestionCompleted,
    IngestionFailed,
    IngestionSkipped,
    RunParameters,
    TrainingRequested,
    TrainingStarted,
)
from services.trainer.options import TrainOptions
from workflows import steps
from workflows.errors import WorkflowError

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

    @classmethod
    def from_event(cls, event: Event, defaults: RunParameters | None = None) -> RunRequest:
        """The run a ``dataset.updated`` or ``training.requested`` asks for; the event's own
        parameters win, then ``defaults``, then the built-in ones."""
        data = event.data
        if not isinstance(data, (DatasetUpdated, TrainingRequested)):
            raise ValueError(f"{event.type.value} does not request a run")
        trigger = event.type.short
        if isinstance(data, DatasetUpdated):
            trigger += "/" + data.trigger
        params = data.parameters or defaults or RunParameters()
        return cls(data.uri, params, trigger, event.id)

    def to_json(self) -> str:
        return json.dumps({"data_uri": self.data_uri, "parameters": self.parameters.model_dump(),
                           "trigger": self.trigger, "event_id": self.event_id,
                           "run_id": self.run_id, "attempt": self.attempt,
                           "resumes": self.resumes})

    @classmethod
    def from_json(cls, raw: str | bytes) -> RunRequest:
        fields = json.loads(raw)
        return cls(**{**fields, "parameters": RunParameters(**fields["parameters"])})


def _span(seconds: float) -> dict[str, float]:
    """started_at/ended_at of something that just ended after ``seconds``."""
    now = time.time()
    return {"started_at": round(now - seconds, 3), "ended_at": round(now, 3)}


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
            "cache": None, "dataset_uri": None, "digest": None,
            **({"attempt": request.attempt, "resumes": request.resumes} if request.resumes else {}),
        }
        self.save()
        self._r.zadd("retrain:runs", {request.run_id: time.time()})

    def save(self) -> None:
        self._r.set(f"retrain:run:{self.summary['run_id']}", json.dumps(self.summary),
                    ex=30 * 86400)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        record = StepRecord(name)
        started, started_at = time.perf_counter(), time.time()
        try:
            yield record
        except BaseException as exc:
            record.status = "failed"
            record.detail.setdefault("error", str(exc))
            raise
        else:
            if record.status == "running":
                record.status = "succeeded"
        finally:
            record.seconds = round(time.perf_counter() - started, 3)
            self.summary["steps"].append(
                {"name": name, "status": record.status, "seconds": record.seconds,
                 "started_at": round(started_at, 3), "ended_at": round(time.time(), 3),
                 **record.detail})
            self.save()
            timeline.record(self._r, "step", name, status=record.status, seconds=record.seconds,
                            run_id=self.summary["run_id"], **record.detail)


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
        self._cache = ContentCache(client, settings.cache_ttl_seconds)

    def run(self, request: RunRequest) -> dict[str, Any]:
        """Run the workflow; returns its summary (also stored in Redis). The run's lease is held
        meanwhile, so a run whose process dies is found and closed (``workflows.queue``)."""
        from workflows.lease import Lease

        with Lease(self._r, request.run_id).held():
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
                                   policy=check.policy, key=check.key)
                rec.summary["cache"] = {"hit": check.decision.hit, "reason": check.decision.reason,
                                        "policy": check.policy, "key": check.key}
            entry = self._ingest(request, root, fp, check, rec)
            rec.summary["dataset_uri"] = entry.dataset_uri
            rec.save()
            if params.models:
                self._train_all(request, entry.dataset_uri, rec)
            failed = [m for m, r in rec.summary["models"].items() if r["status"] != "trained"]
            rec.summary["status"] = "failed" if failed else "succeeded"
        except (WorkflowError, DatasetError, OSError) as exc:
            rec.summary["status"] = "failed"
            rec.summary["error"] = str(exc)
            if not isinstance(exc, (WorkflowError, DatasetError)):
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

    # training fan-out ------------------------------------------------------------------------
    def _train_all(self, request: RunRequest, dataset_uri: str, rec: RunRecorder) -> None:
        params = request.parameters
        run_dir = self._settings.runs_dir / request.run_id
        threads = max(1, (os.cpu_count() or 2) // (len(params.models) * params.workers))
        env = {**os.environ, "RETRAIN_REDIS_URL": self._redis_url,
               "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}
        procs: dict[str, tuple[subprocess.Popen[str], float, Path]] = {}
        warm = self._warm_starts(params) if params.warm_start else {}
        for model in params.models:
            out = run_dir / model / "model"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = self.train_options(request, model, dataset_uri, out,
                                     warm.get(model)).local_command()
            with (out.parent / "train.log").open("w") as log_file:  # the child keeps its copy
                proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                        text=True, preexec_fn=dies_with_us())  # noqa: PLW1509
            procs[model] = (proc, time.perf_counter(), out)
            self._emit(make_event(
                EventType.TRAINING_STARTED,
                TrainingStarted(run_id=request.run_id, model_type=model, dataset_uri=dataset_uri),
                source=SOURCE, id=f"{request.run_id}/{model}/started"))
        self._wait(request, procs, rec)

    @staticmethod
    def train_options(request: RunRequest, model: str, dataset_uri: str, out: Path,
                      warm_start: str | None = None) -> TrainOptions:
        """The training ``request`` asks for, for one variant."""
        params = request.parameters
        return TrainOptions(model=model, dataset=dataset_uri, out=out, run_id=request.run_id,
                            epochs=params.epochs, steps_per_epoch=params.steps_per_epoch or None,
                            batch_size=params.batch_size, learning_rate=params.learning_rate,
                            workers=params.workers, warm_start=warm_start)

    def _warm_starts(self, params: RunParameters) -> dict[str, str]:
        """The champion's model for the variant it is (the others start from scratch)."""
        from services.selector.champion import ChampionStore

        champion = ChampionStore(self._r, str(self._settings.model_repo.resolve())).get()
        if champion is None or not Path(champion.model_uri).is_dir():
            log.info("warm start asked for, but there is no champion yet")
            return {}
        return {champion.model_type: champion.model_uri} if champion.model_type in params.models else {}

    def _wait(self, request: RunRequest,
              procs: dict[str, tuple[subprocess.Popen[str], float, Path]],
              rec: RunRecorder) -> None:
        from services.trainer.progress import progress_key

        pending = dict(procs)
        with Progress(TextColumn("  train {task.description:<10}"), BarColumn(),
                      TextColumn("{task.completed:>5.0f}/{task.total:<5.0f} {task.fields[info]}"),
                      TimeElapsedColumn(), console=self._console, transient=False) as bar:
            tasks = {m: bar.add_task(m, total=1, info="starting") for m in procs}
            while pending:
                for model in list(pending):
                    proc, started, out = pending[model]
                    try:  # progress is for show: a Redis outage must not orphan a training
                        raw = self._r.hget(progress_key(request.run_id, model), "latest")
                    except redis.RedisError:
                        raw = None
                    if raw:
                        p = json.loads(raw)
                        bar.update(tasks[model], total=p["planned"], completed=p["step"],
                                   info=f"loss {p['loss']:.3f} acc {p['accuracy']:.3f}")
                    if proc.poll() is None:
                        continue
                    del pending[model]
                    seconds = round(time.perf_counter() - started, 3)
                    self._finished(request, model, proc.returncode, out, seconds, rec)
                    bar.update(tasks[model], info="done" if proc.returncode == 0 else "FAILED")
                time.sleep(0.2)

    def _finished(self, request: RunRequest, model: str, code: int, out: Path,
                  seconds: float, rec: RunRecorder) -> None:
        from services.trainer.process import failed_event, read_result, trained_event

        result = read_result(out) if code == 0 else None
        size = len(request.parameters.models)  # the selector's round closes when all ended
        if result is not None:
            event = trained_event(request.run_id, model, rec.summary["dataset_uri"], result, size)
            rec.summary["models"][model] = {"status": "trained", "seconds": seconds,
                                            "val_accuracy": result.val_accuracy,
                                            "model_uri": result.model_uri}
            rec.summary["steps"].append({"name": f"train:{model}", "status": "succeeded",
                                         "seconds": seconds, **_span(seconds),
                                         "val_accuracy": result.val_accuracy})
        else:
            log_tail = (out.parent / "train.log").read_text().strip().splitlines()[-3:]
            reason = f"trainer exited with code {code}: " + " | ".join(log_tail)
            event = failed_event(request.run_id, model, reason, size)
            rec.summary["models"][model] = {"status": "failed", "seconds": seconds, "reason": reason}
            rec.summary["steps"].append({"name": f"train:{model}", "status": "failed",
                                         "seconds": seconds, **_span(seconds), "error": reason})
        rec.save()
        self._emit(event)  # each model goes to the selector the moment it is done
