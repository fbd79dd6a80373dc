"""Adaptive micro-batching: concurrent requests share one model call.

One thread runs the model. Requests that arrive while it is busy queue up, and the next call
takes all of them (up to ``max_batch`` images), so the batch grows with the load on its own.
When the previous call was shared, the thread can also wait up to ``max_wait`` for
stragglers (off by default: measured, the wait cost more latency than the fuller batches
saved); a lone request never waits.
Requests of the two input kinds (encoded bytes, float arrays) are run as separate calls. A
request whose bytes cannot be decoded fails alone: its batch is re-run without it.

A batch's answers reach the event loop together: one ``call_soon_threadsafe`` (one wake-up
of the loop) per model call, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from services.serving.errors import BadRequestError, ModelFailedError, NotFiniteError

if TYPE_CHECKING:  # the model (TensorFlow) is what the server loads, not what batching needs
    from services.serving.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 64  # images per model call
    max_wait: float = 0.0  # seconds a shared call waits for more requests


@dataclass
class _Request:
    kind: str  # "bytes" or "arrays"
    inputs: list[bytes] | np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[np.ndarray, int]]

    @property
    def size(self) -> int:
        return len(self.inputs)


Outcome = tuple[_Request, Any, BaseException | None]  # (request, result, or the error)


def _settle(outcomes: list[Outcome]) -> None:
    """On the event loop: hand each waiting caller its answer (a caller gone meanwhile is
    skipped)."""
    for request, result, error in outcomes:
        if request.future.done():
            continue
        if error is None:
            request.future.set_result(result)
        else:
            request.future.set_exception(error)


def _deliver(outcomes: list[Outcome]) -> None:
    """From the model thread: one wake-up per event loop for the whole batch."""
    loops: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        loops.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in loops.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting there any more
            pass


class MicroBatcher:
    """``await batcher.predict(kind, inputs)`` → (probabilities, model version)."""

    def __init__(self, current: Callable[[], LoadedModel], config: BatchConfig = BatchConfig(),
                 observe: Callable[[int, int], None] | None = None) -> None:
        self._current = current
        self._config = config
        self._observe = observe or (lambda images, version: None)  # each model call
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._held: _Request | None = None  # taken from the queue but too big for the last batch
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def predict(self, kind: str, inputs: list[bytes] | np.ndarray) -> tuple[np.ndarray, int]:
        loop = asyncio.get_running_loop()
        request = _Request(kind, inputs, loop, loop.create_future())
        self._queue.put(request)
        return await request.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # the model thread ---------------------------------------------------------------------
    def _run(self) -> None:
        shared = False
        while True:
            batch = self._collect(wait=shared)
            if batch is None:
                return
            shared = len(batch) > 1
            # a request whose caller went away is dropped (a late cancel is skipped by _settle)
            batch = [r for r in batch if not r.future.done()]
            try:
                model = self._current()
            except Exception as exc:  # no model loaded: every waiting request gets the error
                _deliver([(request, None, exc) for request in batch])
                continue
            outcomes: list[Outcome] = []
            for kind in ("bytes", "arrays"):
                group = [r for r in batch if r.kind == kind]
                if group:
                    self._call(model, kind, group, outcomes)
            _deliver(outcomes)

    def _collect(self, wait: bool) -> list[_Request] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, size = [first], first.size
        deadline = time.monotonic() + (self._config.max_wait if wait else 0.0)
        while size < self._config.max_batch:
            timeout = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # close after this batch
                break
            if size + nxt.size > self._config.max_batch:
                self._held = nxt
                break
            batch.append(nxt)
            size += nxt.size
        return batch

    def _call(self, model: LoadedModel, kind: str, group: list[_Request],
              outcomes: list[Outcome]) -> None:
        try:
            probs = model.predict(kind, [r.inputs for r in group])
        except BadRequestError as exc:
            if len(group) == 1:
                outcomes.append((group[0], None, exc))
                return
            for request in group:  # find the culprit: each request on its own
                self._call(model, kind, [request], outcomes)
            return
        except Exception as exc:  # noqa: BLE001 - the model's failure, whatever it raised: a
            # 500 of that version for each request (logged by the plane, once a minute)
            failed = ModelFailedError("internal server error", version=model.version)
            failed.__cause__ = exc
            outcomes.extend((request, None, failed) for request in group)
            return
        self._observe(sum(r.size for r in group), model.version)
        finite = bool(np.isfinite(probs).all())  # once per call; per request only if not
        start = 0
        for request in group:
            answer = probs[start : start + request.size]
            start += request.size
            if finite or np.isfinite(answer).all():
                outcomes.append((request, (answer, model.version), None))
            else:
                outcomes.append((request, None, NotFiniteError("internal server error",
                                                               version=model.version)))

