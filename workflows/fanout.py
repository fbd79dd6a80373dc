"""The run's trainings: every variant at once, each from the training cache or in its own
process, each told to the selector the moment it is done.

A variant whose training is in the cache starts no process: its ``model.trained`` names the
model the identical training made, ``"cached": true``, with the recorded metrics. A miss
claims the key (single flight across runs, ``workflows.training``): it trains, or waits for
the run already training it and reuses that model, or takes over if that run dies.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from core import timeline
from core.children import dies_with_us
from core.settings import Settings
from core.cache_policy import TRAINING, Policy
from core.lease import Lease
from events import Event, EventType, make_event
from events.payloads import RunParameters, TrainingStarted
from services.trainer import outcome
from services.trainer.training_cache import TrainingEntry, training_cache
from services.trainer.options import TrainOptions
from workflows.record import RunRecorder
from workflows.training import CONCURRENT, Memo, TrainingCheck

log = logging.getLogger(__name__)
SOURCE = "retrain/runner"


@dataclass
class _Training:
    options: TrainOptions
    check: TrainingCheck
    since: float  # when this run began to want it (a forced run takes no older model)
    lease: Lease | None = None
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0


class Trainings:
    def __init__(self, settings: Settings, client: redis.Redis, redis_url: str,
                 emit: Callable[[Event], None], console: Console, run_id: str,
                 params: RunParameters, rec: RunRecorder, dataset_uri: str) -> None:
        self._settings, self._r, self._redis_url = settings, client, redis_url
        self._emit, self._console = emit, console
        self._run_id, self._params, self._rec, self._dataset_uri = run_id, params, rec, dataset_uri
        self._size = len(params.models)  # the selector's round closes when all ended
        self._memo = Memo(training_cache(client, settings.cache_ttl_seconds),
                          Policy.parse(params.train_cache, TRAINING), params.force,
                          int(settings.training_lease_seconds * 1000))

    def run(self) -> None:
        params = self._params
        run_dir = self._settings.runs_dir / self._run_id
        warm = self._warm_starts() if params.warm_start else {}
        todo: dict[str, _Training] = {}
        try:
            with Progress(TextColumn("  train {task.description:<10}"), BarColumn(),
                          TextColumn("{task.completed:>5.0f}/{task.total:<5.0f} {task.fields[info]}"),
                          TimeElapsedColumn(), console=self._console, transient=False) as bar:
                tasks = {m: bar.add_task(m, total=1, info="checking the cache") for m in params.models}
                for model in params.models:
                    options = self.options(self._run_id, params, model, self._dataset_uri,
                                           run_dir / model / "model", warm.get(model))
                    check = self._memo.check(options)
                    entry = check.decision.entry
                    if entry is not None:
                        self._cached(model, entry, check.decision.reason, bar, tasks[model])
                    else:
                        todo[model] = _Training(options, check, time.time())
                        self._advance(model, todo, bar, tasks[model])
                self._wait(todo, bar, tasks)
        finally:
            self._memo.close()

    @staticmethod
    def options(run_id: str, params: RunParameters, model: str, dataset_uri: str, out: Path,
                warm_start: str | None = None) -> TrainOptions:
        """The training run ``run_id`` asks for with ``params``, for one variant."""
        return TrainOptions(model=model, dataset=dataset_uri, out=out, run_id=run_id,
                            epochs=params.epochs, steps_per_epoch=params.steps_per_epoch or None,
                            batch_size=params.batch_size, learning_rate=params.learning_rate,
                            workers=params.workers, warm_start=warm_start,
                            deterministic=params.deterministic)

    def _warm_starts(self) -> dict[str, str]:
        """The champion's model for the variant it is (the others start from scratch)."""
        from services.selector.champion import ChampionStore

        champion = ChampionStore(self._r, str(self._settings.model_repo.resolve())).get()
        if champion is None or not Path(champion.model_uri).is_dir():
            log.info("warm start asked for, but there is no champion yet")
            return {}
        models = self._params.models
        return {champion.model_type: champion.model_uri} if champion.model_type in models else {}

    # one variant -------------------------------------------------------------------------------
    def _advance(self, model: str, todo: dict[str, _Training], bar: Progress,
                 task: TaskID) -> None:
        """A training not started yet: claim its key; start it, reuse a concurrent run's
        model, or go on waiting for that run."""
        training = todo[model]
        if not self._memo.enabled:
            self._start(model, training)
            bar.update(task, info="training (cache off)")
            return
        got = self._memo.claim(training.check, training.since)
        if isinstance(got, TrainingEntry):
            del todo[model]
            self._cached(model, got, CONCURRENT, bar, task)
        elif got is not None:
            training.lease = got
            self._start(model, training)
            bar.update(task, info="training (cache miss)")
        else:
            bar.update(task, info="waiting: a concurrent run trains the same key")

    def _start(self, model: str, training: _Training) -> None:
        params = self._params
        threads = max(1, (os.cpu_count() or 2) // (len(params.models) * params.workers))
        env = {**os.environ, "RETRAIN_REDIS_URL": self._redis_url,
               "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}
        out = training.options.out
        out.parent.mkdir(parents=True, exist_ok=True)
        command = training.options.local_command(self._settings.train_command or None)
        with (out.parent / "train.log").open("w") as log_file:  # the child keeps its copy
            training.proc = subprocess.Popen(
                command, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
                preexec_fn=dies_with_us())  # noqa: PLW1509
        training.started = time.perf_counter()
        self._emit(make_event(
            EventType.TRAINING_STARTED,
            TrainingStarted(run_id=self._run_id, model_type=model,
                            dataset_uri=self._dataset_uri),
            source=SOURCE, id=f"{self._run_id}/{model}/started"))

    def _wait(self, todo: dict[str, _Training], bar: Progress, tasks: dict[str, TaskID]) -> None:
        from services.trainer.progress import progress_key

        while todo:
            for model in list(todo):
                training = todo[model]
                if training.proc is None:
                    self._advance(model, todo, bar, tasks[model])
                    continue
                try:  # progress is for show: a Redis outage must not orphan a training
                    raw = self._r.hget(progress_key(self._run_id, model), "latest")
                except redis.RedisError:
                    raw = None
                if raw:
                    p = json.loads(raw)
                    bar.update(tasks[model], total=p["planned"], completed=p["step"],
                               info=f"loss {p['loss']:.3f} acc {p['accuracy']:.3f}")
                code = training.proc.poll()
                if code is None:
                    continue
                del todo[model]
                self._finished(model, training, code)
                bar.update(tasks[model], info="done" if code == 0 else "FAILED")
            time.sleep(0.2)

    # outcomes ----------------------------------------------------------------------------------
    def _cached(self, model: str, entry: TrainingEntry, reason: str, bar: Progress,
                task: TaskID) -> None:
        """A hit: no process; the recorded model goes to the selector at once."""
        summary = self._rec.summary
        summary["models"][model] = {"status": "trained", "cached": True, "seconds": 0.0,
                                    "val_accuracy": entry.val_accuracy,
                                    "model_uri": entry.model_uri, "reason": reason}
        self._step(model, "cached", 0.0, val_accuracy=entry.val_accuracy, cached=True,
                   reason=reason, key=entry.key, trained_by=entry.run_id)
        bar.update(task, total=max(entry.steps, 1), completed=max(entry.steps, 1),
                   info=f"cached: val acc {entry.val_accuracy:.3f}")
        self._emit(outcome.trained_event(self._run_id, model, self._dataset_uri,
                                         entry.result(), self._size, cached=True))

    def _finished(self, model: str, training: _Training, code: int) -> None:
        seconds = round(time.perf_counter() - training.started, 3)
        out = training.options.out
        result = outcome.read_result(out) if code == 0 else None
        try:
            self._memo.finish(training.check, training.lease, result, self._run_id,
                              self._dataset_uri)
        except (redis.RedisError, OSError) as exc:  # the model is fine; only the memo is lost
            log.warning("%s: could not record the training in the cache: %s", model, exc)
        miss = training.check.decision.reason
        if result is not None:
            event = outcome.trained_event(self._run_id, model, self._dataset_uri,
                                          result, self._size)
            self._rec.summary["models"][model] = {
                "status": "trained", "seconds": seconds, "val_accuracy": result["val_accuracy"],
                "model_uri": result["model_uri"]}
            self._step(model, "succeeded", seconds, val_accuracy=result["val_accuracy"],
                       cached=False, reason=miss, key=training.check.key)
        else:
            log_tail = (out.parent / "train.log").read_text().strip().splitlines()[-3:]
            reason = f"trainer exited with code {code}: " + " | ".join(log_tail)
            event = outcome.failed_event(self._run_id, model, reason, self._size)
            self._rec.summary["models"][model] = {"status": "failed", "seconds": seconds,
                                                  "reason": reason}
            self._step(model, "failed", seconds, error=reason, cached=False, cache=miss)
        self._emit(event)  # each model goes to the selector the moment it is done

    def _step(self, model: str, status: str, seconds: float, **detail: object) -> None:
        now = time.time()
        self._rec.summary["steps"].append({
            "name": f"train:{model}", "status": status, "seconds": seconds,
            "started_at": round(now - seconds, 3), "ended_at": round(now, 3), **detail})
        self._rec.save()
        timeline.record(self._r, "step", f"train:{model}", status=status, seconds=seconds,
                        run_id=self._run_id, **detail)
