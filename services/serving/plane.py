"""The data plane the HTTP and gRPC APIs share (as KServe's ``DataPlane`` is): the served
model, the one way to call it (bounded by the backlog, micro-batched while the server runs),
the door (API keys and rate limits), and the request metrics. Transport-neutral: each API
parses its requests, asks the plane, words the answer or the ``ServingError``, and tells the
plane what it answered (``answered`` and ``refused``: the one place inference requests are
counted)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from services.serving.batching import BatchConfig, MicroBatcher
from services.serving.errors import (
    BadRequestError,
    ModelFailedError,
    ModelNotFoundError,
    NotFiniteError,
    RateLimitedError,
    ServingError,
    StatisticsOffError,
)
from services.serving.inputs import OUTPUT
from services.serving.limits import Backlog, RateLimiter, retry_after_header
from services.serving.metrics import ServingMetrics

if TYPE_CHECKING:  # the model (TensorFlow) is loaded by the server, not needed to describe it
    from services.serving.model import LoadedModel, ModelHolder

log = logging.getLogger(__name__)
# what metadata says, over HTTP (GET /v2, GET /v2/models/NAME) and gRPC
SERVER_NAME = "retrain"
EXTENSIONS = ("binary_tensor_data",)
STATISTICS = "statistics"  # the extension, served while per-version statistics are kept
PLATFORM = "tensorflow_savedmodel"
INPUTS = (("image_bytes", "BYTES", (-1,)), ("images", "FP32", (-1, 28, 28)))  # name, type, shape
OUTPUTS = ((OUTPUT, "FP32", (-1, 10)),)


def _tensors(described: tuple[tuple[str, str, tuple[int, ...]], ...]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": t, "shape": list(shape)} for n, t, shape in described]


def server_version() -> str:
    """The installed retrain's version."""
    try:
        return version("retrain")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _model_call(model: LoadedModel, kind: str, inputs: list[bytes] | np.ndarray) -> np.ndarray:
    """(On a worker thread.) ``model``'s answer for one request; the model raising anything but
    a refusal of the input is its failure (``ModelFailedError`` naming its version)."""
    try:
        return model.predict(kind, [inputs])
    except ServingError:
        raise
    except Exception as exc:  # said in the log by the plane (``Plane.predict``), not per request
        raise ModelFailedError("internal server error", version=model.version) from exc


class Repeated:
    """An error said once per version, then once a minute with how many times it happened
    since: a broken model answering every request must not write a log line per request."""

    def __init__(self, message: str, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._message, self._every, self._clock = message, every, clock
        self._said: dict[int, tuple[float, int]] = {}  # version: (when last said, since then)
        self._lock = threading.Lock()

    def said(self, version: int, cause: BaseException | None = None) -> None:
        """It happened again to ``version`` (``cause``: the exception, its traceback logged
        with each line said)."""
        now = self._clock()
        with self._lock:
            last, since = self._said.get(version, (None, 0))
            if last is not None and now - last < self._every:
                self._said[version] = (last, since + 1)
                return
            self._said[version] = (now, 0)
        log.error(self._message + ("" if not since else f" ({since} more times since)"), version,
                  exc_info=cause)


def check_finite(probabilities: np.ndarray, version: int) -> None:
    """``NotFiniteError`` naming ``version`` unless every value is a finite number (an
    unbatched call's; the micro-batcher checks its calls itself, request by request)."""
    if not np.isfinite(probabilities).all():
        raise NotFiniteError("internal server error", version=version)


class Plane:
    """``limiter`` None: no limits and no key checks. ``batching`` None: each request is its
    own model call; otherwise concurrent requests share calls between ``open`` and ``close``."""

    def __init__(self, holder: ModelHolder, model_name: str, metrics: ServingMetrics,
                 backlog: Backlog, *, limiter: RateLimiter | None = None,
                 batching: BatchConfig | None = None) -> None:
        self.holder = holder
        self.model_name = model_name
        self.metrics = metrics
        self._versions = metrics.versions  # None: no per-version statistics
        self._backlog = backlog
        self._limiter = limiter
        self._batching = batching
        self._batcher: MicroBatcher | None = None
        self._nonfinite = Repeated("version %d answered probabilities that are not finite "
                                   "numbers")
        self._raised = Repeated("version %d failed a model call")

    def check_name(self, name: str) -> None:
        """The model a request names must be the one served (404 otherwise)."""
        if name != self.model_name:
            raise ModelNotFoundError(f"model {name!r} not found (this server serves "
                                     f"{self.model_name!r})")

    def server_metadata(self) -> dict[str, Any]:
        """What the server says of itself (``GET /v2``; gRPC's ServerMetadata, the same fields)."""
        extensions = [*EXTENSIONS, STATISTICS] if self._versions is not None else list(EXTENSIONS)
        return {"name": SERVER_NAME, "version": server_version(), "extensions": extensions}

    def model_metadata(self, name: str) -> dict[str, Any]:
        """What it says of the model ``name`` (``GET /v2/models/NAME``; gRPC's ModelMetadata):
        ``ModelNotReadyError`` until a version is loaded."""
        return {"name": name, "versions": [str(self.holder.current.version)],
                "platform": PLATFORM, "inputs": _tensors(INPUTS), "outputs": _tensors(OUTPUTS)}

    def statistics(self, name: str, version: str = "") -> dict[str, Any]:
        """The statistics extension's answer (``GET /v2/models[/NAME[/versions/V]]/stats``;
        gRPC's ModelStatistics): every version counted in this process and the one served,
        or ``version`` alone. ``name`` "" means every model (the one served here). Refused
        404 for another model or a version not counted, 501 when statistics are off."""
        if self._versions is None:
            raise StatisticsOffError("per-version statistics are off on this server "
                                     "(RETRAIN_SERVE_VERSION_STATS=0)")
        if name:
            self.check_name(name)
        known = set(self._versions.versions())
        served = self.holder.served_version
        if served is not None:
            known.add(served)
        if version:
            if not version.isdigit():
                raise BadRequestError(f"version {version!r} is not a version number")
            if int(version) not in known:
                raise ModelNotFoundError(f"version {version} of model {self.model_name!r} is "
                                         f"not known to this server (known: {sorted(known)})")
            known = {int(version)}
        return {"model_stats": self._versions.model_stats(self.model_name, sorted(known))}

    def answered(self, protocol: str, seconds: float, version: int,
                 probabilities: np.ndarray) -> None:
        """One inference request answered 200 after ``seconds`` (``protocol``: v1, v2 or
        grpc), by ``version`` with ``probabilities``."""
        self.metrics.count(protocol, 200)
        self.metrics.timed(protocol, seconds)
        if self._versions is not None:
            self._versions.answered(version, 200, seconds, probabilities)

    def refused(self, protocol: str, error: Exception, seconds: float) -> None:
        """A request answered with ``error``'s status (a ``ServingError`` or an API key
        refused; anything else is a 500). Per version, only the model's own failure
        (``ModelFailedError``, naming the version that failed) is that version's outcome; any
        other error refused the request before a model judged it (bad input, a key, a rate, a
        full backlog, no model loaded, a defect of the server's own code) and is counted apart,
        under the version served then (none loaded: not per version)."""
        code = getattr(error, "status", 500)
        self.metrics.count(protocol, code)
        versions = self._versions
        if versions is None:
            return
        if isinstance(error, ModelFailedError) and error.version is not None:
            versions.answered(error.version, code, seconds)
            return
        served = self.holder.served_version
        if served is not None:
            versions.refused(served, code)

    def _called(self, images: int, version: int) -> None:
        """One model call of ``images`` images by ``version``."""
        self.metrics.batch(images)
        if self._versions is not None:
            self._versions.executed(version)

    def admit(self, address: str, authorization: str | None) -> None:
        """Let a request from ``address`` in, or refuse it: a key that is not ours
        (``core.auth.KeyRefusedError``, 401), a client over its rate (``RateLimitedError``)."""
        if self._limiter is None:
            return
        verdict = self._limiter.check(address, authorization)
        if not verdict.allowed:
            raise RateLimitedError(
                f"rate limit of {verdict.rate:g} requests/s exceeded for {verdict.client}",
                retry_after_header(verdict.retry_after))

    async def predict(self, kind: str, inputs: list[bytes] | np.ndarray) -> tuple[np.ndarray, int]:
        """The probabilities for ``inputs`` ("bytes" or "arrays"), and the version that gave
        them; ``OverloadedError`` when too many images already wait, ``ModelFailedError`` when
        the model raised or answered something that is not a number (for every door and
        encoding: JSON, binary tensor data, gRPC)."""
        with self._backlog.admitted(len(inputs)):
            batcher = self._batcher
            try:
                if batcher is not None:
                    probs, served = await batcher.predict(kind, inputs)
                else:
                    model = self.holder.current  # the version answering, even if swapped
                    probs = await run_in_threadpool(_model_call, model, kind, inputs)
                    served = model.version
                    self._called(len(inputs), served)
                    check_finite(probs, served)
            except NotFiniteError as exc:  # batched: checked once per model call, on its thread
                self._nonfinite.said(exc.version or 0)
                raise
            except ModelFailedError as exc:  # a model that fails every request: a line a minute
                self._raised.said(exc.version or 0, exc.__cause__)
                raise
        return probs, served

    def open(self) -> None:
        """Start sharing model calls (the micro-batcher's thread), if batching is on."""
        if self._batching is not None and self._batcher is None:
            self._batcher = MicroBatcher(lambda: self.holder.current, self._batching,
                                         self._called)

    def close(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
