"""A training's progress in Redis, written beside the training, never in its way.

Progress is for show (the runner's bars, ``retrain status``): the training loop hands each
point to a writer thread and goes on. While Redis is away the writer keeps the latest points
(a bounded number) and tries again every second, logging once when Redis goes and once when
it is back; a training is never slowed down, let alone failed, by an outage.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any

import redis

log = logging.getLogger(__name__)
PROGRESS_TTL = 7 * 86400
KEPT_WHILE_AWAY = 1000  # points kept for the history while Redis is away (the oldest go)


def progress_key(run_id: str, model_type: str) -> str:
    return f"retrain:progress:{run_id}:{model_type}"


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
        pipe.execute()
