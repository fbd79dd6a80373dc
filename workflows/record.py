"""What a run leaves in Redis as it goes: its summary (``retrain:run:<id>``, with every step's
start, end, outcome and reason) and one timeline entry per step."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from core import timeline
from events import Event
from events.payloads import DatasetUpdated, RunParameters, TrainingRequested


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
