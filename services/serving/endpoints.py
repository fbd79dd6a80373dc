"""The routes FastAPI answers: health, status and metadata of both protocols, and the metrics,
each protocol's endpoints a class registered on the app (as KServe's
``register_v1_endpoints(app, dataplane)``). Predict and infer are answered ahead of FastAPI
(``inference_routes``); each protocol's registration declares its route all the same, so that
the OpenAPI document (``/openapi.json``, ``/docs``) describes it (``inference_docs``).

A route naming a model checks the name once, as its router's dependency (404 for any other).
None of these routes needs an API key: probes and Prometheus scrape them as they are.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from core.auth import KeyRefusedError
from services.serving.errors import ANSWERED, ServingError
from services.serving.inference_docs import infer_docs, predict_docs
from services.serving.metrics import CONTENT_TYPE, ServingMetrics
from services.serving.plane import Plane

V1, V2 = "KServe V1", "Open Inference Protocol V2"


def _readiness(ready: bool, **named: str) -> Response:
    """``{..., "ready": ready}``: 200 when ready, 503 until then (what a probe reads)."""
    return JSONResponse({**named, "ready": ready}, status_code=200 if ready else 503)


class V1Endpoints:
    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def model_status(self, name: str) -> dict[str, Any]:
        """Whether the model is ready, and which version answers."""
        version = self.plane.holder.current.version  # 503 until one is loaded
        return {"name": name, "ready": True, "model_version": str(version)}


class V2Endpoints:
    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def server_metadata(self) -> dict[str, Any]:
        return self.plane.server_metadata()

    def live(self) -> Response:
        """200 while the server can serve; 503 with the reason when it never will (TensorFlow
        cannot start), so that Kubernetes restarts it."""
        broken = self.plane.holder.broken
        if broken:
            return JSONResponse({"live": False, "error": broken}, status_code=503)
        return JSONResponse({"live": True})

    def ready(self) -> Response:
        """200 once a model version is loaded, 503 until then."""
        return _readiness(self.plane.holder.ready)

    def model_metadata(self, name: str) -> dict[str, Any]:
        return self.plane.model_metadata(name)

    def model_ready(self, name: str) -> Response:
        return _readiness(self.plane.holder.ready, name=name)

    def all_statistics(self) -> dict[str, Any]:
        """The statistics extension: every version of every model served (here, one model)."""
        return self.plane.statistics("")

    def statistics(self, name: str) -> dict[str, Any]:
        """The statistics extension: each version's inference and execution counts, successes
        and failures with their total nanoseconds, and the last inference (ms since the epoch)."""
        return self.plane.statistics(name)

    def version_statistics(self, name: str, version: str) -> dict[str, Any]:
        """The statistics extension, for one version (404 for one this server has not served)."""
        return self.plane.statistics(name, version)


def _named(plane: Plane) -> Any:
    """The model-name check as a router's dependency, on the event loop (async: a check that
    never waits takes no worker thread, and probes call these routes often)."""
    async def named(name: str) -> None:
        plane.check_name(name)
    return named


def register_v1_endpoints(app: FastAPI, plane: Plane) -> None:
    endpoints = V1Endpoints(plane)
    models = APIRouter(tags=[V1], dependencies=[Depends(_named(plane))])
    models.add_api_route("/v1/models/{name}", endpoints.model_status, methods=["GET"])
    app.include_router(models)
    app.include_router(predict_docs(V1))


def register_v2_endpoints(app: FastAPI, plane: Plane) -> None:
    endpoints = V2Endpoints(plane)
    server = APIRouter(tags=[V2])
    server.add_api_route("/v2", endpoints.server_metadata, methods=["GET"])
    server.add_api_route("/v2/health/live", endpoints.live, methods=["GET"])
    server.add_api_route("/v2/health/ready", endpoints.ready, methods=["GET"])
    # before /v2/models/{name}, which would take "stats" for a model's name
    server.add_api_route("/v2/models/stats", endpoints.all_statistics, methods=["GET"])
    models = APIRouter(tags=[V2], dependencies=[Depends(_named(plane))])
    models.add_api_route("/v2/models/{name}", endpoints.model_metadata, methods=["GET"])
    models.add_api_route("/v2/models/{name}/ready", endpoints.model_ready, methods=["GET"])
    models.add_api_route("/v2/models/{name}/stats", endpoints.statistics, methods=["GET"])
    models.add_api_route("/v2/models/{name}/versions/{version}/stats",
                         endpoints.version_statistics, methods=["GET"])
    app.include_router(server)
    app.include_router(models)
    app.include_router(infer_docs(V2))


def register_metrics_endpoint(app: FastAPI, metrics: ServingMetrics) -> None:
    def prometheus() -> Response:
        """Requests by protocol and code, latency, batch sizes, the version served."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_api_route("/metrics", prometheus, methods=["GET"], tags=["metrics"])


def answer_errors(app: FastAPI, plane: Plane) -> None:
    """A refusal on a FastAPI route is answered as the inference routes answer theirs:
    ``{"error": message}`` with the error's status and headers, counted by protocol."""
    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ANSWERED)
        plane.metrics.count("v2" if request.url.path.startswith("/v2") else "v1", exc.status)
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(ServingError, answer)
    app.add_exception_handler(KeyRefusedError, answer)
