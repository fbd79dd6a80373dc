"""The local model server: KServe V1 and Open Inference Protocol V2 on one data plane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from core.settings import MODEL_NAME
from services.serving.batching import BatchConfig
from services.serving.endpoints import (
    answer_errors,
    register_metrics_endpoint,
    register_v1_endpoints,
    register_v2_endpoints,
)
from services.serving.inference_routes import InferenceRoutes
from services.serving.lifespan import Lifespan
from services.serving.limits import Backlog, RateLimiter
from services.serving.metrics import ServingMetrics
from services.serving.model import ModelHolder, import_tensorflow
from services.serving.plane import Plane, server_version

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
               compile_after: int | None = None, compile_at_load: bool = False,
               version_stats: bool = True,
               start_tensorflow: Callable[[], object] = import_tensorflow) -> FastAPI:
    """The server. ``limiter`` (None: no limits, no key checks) guards the predict and infer
    endpoints, its ``ApiKeys`` telling keyed callers apart; ``batching`` (None: every request
    is its own model call) groups concurrent requests; past ``max_queued`` images waiting for
    the model, requests are answered 503. With ``grpc`` (host, port; port 0: any free one, in
    ``app.state.grpc_port``) the Open Inference Protocol is also served over gRPC, from the
    same model and limits. The versions are read from ``model_repo/model_name/<version>/``,
    or, with ``model_dir``, from ``model_dir/<version>/`` (where KServe's storage initializer
    puts them). With ``compile_at_load``, every version is compiled for LiteRT and warmed
    before it takes traffic (the server is ready once its first version is; the worker
    process that compiles the next ones is started then, but not with ``model_dir``, where
    a new version is a new pod); without, a version that has answered ``compile_after``
    model calls is (``model``). With ``version_stats``, each version's live statistics are
    kept (``version_stats``: on ``/metrics`` and through the statistics extension).
    TensorFlow is imported by ``start_tensorflow``, when the first version loads: until then
    the server answers as it does without a model (live, not ready, 503 for the model)."""
    holder = ModelHolder(model_dir or model_repo / model_name, compile_after, compile_at_load,
                         worker_ahead=model_dir is None, start_tensorflow=start_tensorflow)
    backlog = Backlog(max_queued)
    metrics = ServingMetrics(lambda: backlog.images, lambda: holder.compiled, version_stats)
    plane = Plane(holder, model_name, metrics, backlog, limiter=limiter, batching=batching)
    app = ModelServer(InferenceRoutes(plane, MAX_BODY),  # predict and infer, ahead of FastAPI
                      title="retrain model server", version=server_version(),
                      lifespan=Lifespan(plane, poll_seconds, grpc))
    app.state.holder = holder
    app.state.grpc_port = None
    answer_errors(app, plane)
    register_v1_endpoints(app, plane)  # model status (and predict, documented)
    register_v2_endpoints(app, plane)  # health, metadata (and infer, documented)
    register_metrics_endpoint(app, metrics)
    return app
