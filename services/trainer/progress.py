"""A training's progress in Redis, written beside the training, never in its way.

Progress is for show (the runner's bars, ``retrain status``, the dashboard's learning curves;
they read it through ``read``, ``all_for`` and ``read_many`` here, the record's one owner):
the training loop hands each
point to a writer thread and goes on. While Redis is away the writer keeps the latest points
(a bounded number) and tries again every second, logging once when Redis goes and once when
it is back; a training is never slowed down, let alone failed, by an outage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)
PROGRESS_TTL = 7 * 86400
KEPT_WHILE_AWAY = 1000  # points kept for the history while Redis is away (the oldest go)


PREFIX = "retrain:progress:"
INDEX = "retrain:trainings"  # "<run_id>:<model_type>" of each training, by its latest write


def progress_key(run_id: str, model_type: str) -> str:
    return f"{PREFIX}{run_id}:{model_type}"


class ProgressWriter:
    """``post(point)``, ``end(state, **fields)``, then ``close()``; with no client, nothing."""

    def __init__(self, client: redis.Redis | None, key: str, retry_seconds: float = 1.0) -> None:
        self._client = client
        self._key = key
        self._retry = retry_seconds
        self._lines: deque[tuple[int, str]] = deque(maxlen=KEPT_WHILE_AWAY)  # (number, line)
        self._posted = 0
        self._final: dict[str, str] | None = None
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        if client is not None:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    def post(self, point: dict[str, Any]) -> None:
        if self._thread is None:
            return
        with self._wake:
            self._posted += 1
            self._lines.append((self._posted, json.dumps(point)))
            self._wake.notify()

    def end(self, state: str, **fields: str) -> None:
        """The training's last word (``done`` with its result, ``failed`` with the reason)."""
        if self._thread is None:
            return
        with self._wake:
            self._final = {"state": state, **fields}
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, waiting at most ``timeout`` seconds for Redis."""
        if self._thread is None:
            return
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        away = False
        while True:
            with self._wake:
                while not (self._lines or self._final or self._closing):
                    self._wake.wait()
                taken, final, closing = list(self._lines), self._final, self._closing
            try:
                self._write([text for _, text in taken], final)
            except redis.RedisError as exc:
                if not away:
                    log.warning("progress not reported while Redis is unavailable (%s); the "
                                "training goes on", exc)
                    away = True
                with self._wake:
                    self._wake.wait(self._retry)
                continue
            if away:
                log.info("progress reported again: Redis is back")
                away = False
            with self._wake:
                while self._lines and taken and self._lines[0][0] <= taken[-1][0]:
                    self._lines.popleft()  # written (points dropped meanwhile are gone anyway)
                if final is not None and self._final is final:
                    self._final = None
                if closing and not (self._lines or self._final):
                    return

    def _write(self, lines: list[str], final: dict[str, str] | None) -> None:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        if lines:
            pipe.hset(self._key, mapping={"state": "training", "latest": lines[-1]})
            pipe.rpush(self._key + ":history", *lines)
        if final is not None:
            pipe.hset(self._key, mapping=final)
        pipe.expire(self._key, PROGRESS_TTL)
        pipe.expire(self._key + ":history", PROGRESS_TTL)
        now = time.time()
        pipe.zadd(INDEX, {self._key.removeprefix(PREFIX): now})
        pipe.zremrangebyscore(INDEX, "-inf", now - PROGRESS_TTL)  # as the progress expires
        pipe.execute()


# reading it back ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """A training as its writer left it: ``state`` (training, done, failed; None before the
    first point), the ``latest`` point and, where asked for, every point in order."""

    state: str | None = None
    latest: dict[str, Any] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # the rest: state, the last word's

    @property
    def exists(self) -> bool:
        return bool(self.fields)


def read_many(client: redis.Redis, trainings: Iterable[tuple[str, str]],
              points: bool = True) -> dict[tuple[str, str], Progress]:
    """The progress of each ``(run_id, model_type)`` in ``trainings``, in one round trip;
    ``points``: also every point posted (the learning curve), not only the latest."""
    wanted = list(dict.fromkeys(trainings))
    with client.pipeline(transaction=False) as pipe:
        for run_id, model in wanted:
            key = progress_key(run_id, model)
            pipe.hgetall(key)
            if points:
                pipe.lrange(key + ":history", 0, -1)
        answers = pipe.execute()
    step = 2 if points else 1
    found = {}
    for n, training in enumerate(wanted):
        state = {k.decode(): v.decode() for k, v in answers[n * step].items()}
        latest = state.pop("latest", None)
        history = [json.loads(p) for p in answers[n * step + 1]] if points else []
        found[training] = Progress(state.get("state"), json.loads(latest) if latest else None,
                                   history, state)
    return found


def all_for(client: redis.Redis, run_id: str, models: Iterable[str],
            points: bool = True) -> dict[str, Progress]:
    """The progress of ``run_id``'s trainings of each of ``models``, in one round trip."""
    return {model: progress for (_run, model), progress in
            read_many(client, ((run_id, m) for m in models), points).items()}


def read(client: redis.Redis, run_id: str, model_type: str, points: bool = True) -> Progress:
    """One training's progress."""
    return read_many(client, [(run_id, model_type)], points)[(run_id, model_type)]


def trainings(client: redis.Redis, limit: int = 50) -> list[tuple[str, str]]:
    """``(run_id, model_type)`` of the ``limit`` trainings that reported last, newest first
    (one round trip), whether or not a local run recorded them: a standalone ``retrain
    train`` (run ``manual``) and a cluster's TFJobs (run: the workflow's name) report too."""
    return [(run_id, model) for run_id, _, model in
            (m.decode().rpartition(":") for m in client.zrevrange(INDEX, 0, limit - 1))]
