"""Adaptive micro-batching: concurrent requests share one model call.

One thread runs the model. Requests that arrive while it is busy queue up, and the next call
takes all of them (up to ``max_batch`` images), so the batch grows with the load on its own.
When the previous call was shared, the thread also waits up to ``max_wait`` for stragglers;
under light load (a lone request) it does not wait at all, so a single client pays nothing.
Requests of the two input kinds (encoded bytes, float arrays) are run as separate calls. A
request whose bytes cannot be decoded fails alone: its batch is re-run without it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from services.serving.errors import BadRequestError
from services.serving.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 64  # images per model call
    max_wait: float = 0.002  # seconds a shared call waits for more requests


@dataclass
class _Request:
    kind: str  # "bytes" or "arrays"
    inputs: list[bytes] | np.ndarray
    future: Future[tuple[np.ndarray, int]] = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.inputs)


class MicroBatcher:
    """``await batcher.predict(kind, inputs)`` → (probabilities, model version)."""

    def __init__(self, current: Callable[[], LoadedModel], config: BatchConfig = BatchConfig(),
                 observe: Callable[[int], None] | None = None) -> None:
        self._current = current
        self._config = config
        self._observe = observe or (lambda size: None)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._held: _Request | None = None  # taken from the queue but too big for the last batch
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def predict(self, kind: str, inputs: list[bytes] | np.ndarray) -> tuple[np.ndarray, int]:
        request = _Request(kind, inputs)
        self._queue.put(request)
        return await asyncio.wrap_future(request.future)

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
            # a request whose caller went away is dropped; the others can no longer be cancelled
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            try:
                model = self._current()
            except Exception as exc:  # no model loaded: every waiting request gets the error
                for request in batch:
                    request.future.set_exception(exc)
                continue
            for kind in ("bytes", "arrays"):
                group = [r for r in batch if r.kind == kind]
                if group:
                    self._call(model, kind, group)

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

    def _call(self, model: LoadedModel, kind: str, group: list[_Request]) -> None:
        try:
            probs = model.predict(kind, [r.inputs for r in group])
        except BadRequestError as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            for request in group:  # find the culprit: each request on its own
                self._call(model, kind, [request])
            return
        except Exception as exc:
            log.exception("model call failed for a batch of %d requests", len(group))
            for request in group:
                request.future.set_exception(exc)
            return
        self._observe(sum(r.size for r in group))
        start = 0
        for request in group:
            request.future.set_result((probs[start : start + request.size], model.version))
            start += request.size

