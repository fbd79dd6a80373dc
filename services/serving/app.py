"""The local model server: KServe V1 and Open Inference Protocol V2 on one data plane."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core.settings import MODEL_NAME
from services.serving.batching import BatchConfig, MicroBatcher
from services.serving.errors import (
    ModelNotFoundError,
    RateLimitedError,
    ServingError,
    UnauthorizedError,
)
from services.serving.inference_routes import InferenceRoutes
from services.serving.limits import Backlog, RateLimiter, UnknownKeyError, retry_after_header
from services.serving.model import ModelHolder
from services.serving.plane import (
    EXTENSIONS,
    INPUTS,
    OUTPUTS,
    PLATFORM,
    SERVER_NAME,
    Plane,
    server_version,
)

MAX_BODY = 8 * 1024 * 1024
MAX_QUEUED = 4096  # images accepted and not yet answered (RETRAIN_SERVE_MAX_QUEUED)


class ModelServer(FastAPI):
    """FastAPI, with predict and infer answered before any of its machinery runs (see
    ``inference_routes``)."""

    def __init__(self, inference: InferenceRoutes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inference = inference

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.inference.match(scope)
        if route is None:
            await super().__call__(scope, receive, send)
        else:
            await self.inference.answer(route, scope, receive, send)


def create_app(model_repo: Path, *, poll_seconds: float = 1.0, model_name: str = MODEL_NAME,
               limiter: RateLimiter | None = None,
               batching: BatchConfig | None = BatchConfig(),
               model_dir: Path | None = None, max_queued: int = MAX_QUEUED,
               grpc: tuple[str, int] | None = None,
               compile_after: int | None = None) -> FastAPI:
    """The server. ``limiter`` (None: no limits) guards the predict and infer endpoints;
    ``batching`` (None: every request is its own model call) groups concurrent requests;
    past ``max_queued`` images waiting for the model, requests are answered 503. With
    ``grpc`` (host, port; port 0: any free one, in ``app.state.grpc_port``) the Open
    Inference Protocol is also served over gRPC, from the same model and limits.
    The versions are read from ``model_repo/model_name/<version>/``, or, with ``model_dir``,
    from ``model_dir/<version>/`` (where KServe's storage initializer puts them). A version
    that has answered ``compile_after`` model calls is compiled for LiteRT (``model``)."""
    holder = ModelHolder(model_dir or model_repo / model_name, compile_after)
    registry = CollectorRegistry()
    batch_sizes = Histogram("retrain_serving_batch_size", "Images per model call",
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=registry)
    requests_total = Counter("retrain_serving_requests", "Requests", ["protocol", "code"], registry=registry)
    latency = Histogram("retrain_serving_latency_seconds", "Latency", ["protocol"], registry=registry)
    version_gauge = Gauge("retrain_serving_model_version", "Version being served", registry=registry)
    backlog = Backlog(max_queued)
    Gauge("retrain_serving_queued_images", "Images accepted and not yet answered",
          registry=registry).set_function(lambda: backlog.images)
    Gauge("retrain_serving_model_compiled", "1 when the served version runs on LiteRT",
          registry=registry).set_function(lambda: int(holder.compiled))
    stop = threading.Event()

    def poll() -> None:
        served = None
        while not stop.is_set():
            version = holder.refresh()
            if version != served:  # a new model's objects join the frozen ones (see lifespan)
                gc.freeze()
                served = version
            version_gauge.set(version or 0)
            stop.wait(poll_seconds)

    batcher: list[MicroBatcher] = []

    def admit(address: str, authorization: str | None) -> None:
        if limiter is None:
            return
        try:
            verdict = limiter.check(address, authorization)
        except UnknownKeyError as exc:
            raise UnauthorizedError(str(exc)) from None
        if not verdict.allowed:
            raise RateLimitedError(
                f"rate limit of {verdict.rate:g} requests/s exceeded for {verdict.client}",
                retry_after_header(verdict.retry_after))

    async def predict(kind: str, inputs: list[bytes] | np.ndarray) -> tuple[np.ndarray, int]:
        with backlog.admitted(len(inputs)):
            if batcher:
                return await batcher[0].predict(kind, inputs)
            model = holder.current  # the version answering, even if a swap happens meanwhile
            probs = await run_in_threadpool(model.predict, kind, [inputs])
            batch_sizes.observe(len(inputs))
            return probs, model.version

    plane = Plane(holder, model_name, predict, admit,
                  lambda protocol, code: requests_total.labels(protocol, str(code)).inc(),
                  lambda protocol, seconds: latency.labels(protocol).observe(seconds))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        await run_in_threadpool(holder.refresh)
        # TensorFlow leaves millions of long-lived objects: moved out of the collector's sight,
        # a full collection no longer walks them all (a pause of ~100 ms every so often under
        # load, which was most of the p99)
        gc.collect()
        gc.freeze()
        thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        thread.start()
        if batching is not None:
            batcher.append(MicroBatcher(lambda: holder.current, batching, batch_sizes.observe))
        grpc_server = None
        if grpc is not None:  # the same model, batching, limits and keys over gRPC
            from services.serving.grpc_api import start

            grpc_server, app.state.grpc_port = await start(plane, *grpc)
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        stop.set()
        if batcher:
            batcher.pop().close()

    app = ModelServer(InferenceRoutes(plane, MAX_BODY), title="retrain model server",
                      lifespan=lifespan)
    app.state.holder = holder
    app.state.grpc_port = None

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        protocol = "v2" if request.url.path.startswith("/v2") else "v1"
        requests_total.labels(protocol, str(exc.status)).inc()
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    def _check_name(name: str) -> None:
        if name != model_name:
            raise ModelNotFoundError(f"model {name!r} not found (this server serves {model_name!r})")

    # KServe V1 -------------------------------------------------------------------------------
    @app.get("/v1/models/{name}")
    def v1_status(name: str) -> dict[str, Any]:
        _check_name(name)
        model = holder.current
        return {"name": name, "ready": True, "model_version": str(model.version)}

    # Open Inference Protocol V2 --------------------------------------------------------------
    @app.get("/v2")
    def v2_server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    @app.get("/v2/health/live")
    def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def v2_ready() -> Response:
        return JSONResponse({"ready": holder.ready}, status_code=200 if holder.ready else 503)

    @app.get("/v2/models/{name}")
    def v2_metadata(name: str) -> dict[str, Any]:
        _check_name(name)
        model = holder.current
        def tensors(described: tuple[tuple[str, str, tuple[int, ...]], ...]) -> list[dict[str, Any]]:
            return [{"name": n, "datatype": t, "shape": list(shape)} for n, t, shape in described]

        return {"name": name, "versions": [str(model.version)], "platform": PLATFORM,
                "inputs": tensors(INPUTS), "outputs": tensors(OUTPUTS)}

    @app.get("/v2/models/{name}/ready")
    def v2_model_ready(name: str) -> Response:
        _check_name(name)
        return JSONResponse({"name": name, "ready": holder.ready},
                            status_code=200 if holder.ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
