"""The watcher's HTTP face: health, Prometheus metrics, ``POST /rescan`` so a webhook
(a bucket notification, a calendar) can ask for a scan now, and the providers' webhooks
(``services.ingest_watcher.webhooks``).

``create_app`` is the list of what the service serves; the endpoints are classes registered
on the app. The watcher's own API key (``RETRAIN_API_KEYS``, on ``/rescan``) is checked by
``core.auth``; every refusal is answered by the one error table below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from core import auth
from core.auth import ApiKey, ApiKeys, KeyRefusedError
from core.http import BodyTooLargeError, json_errors
from services.ingest_watcher.watcher import DirectoryWatcher
from services.ingest_watcher.webhooks import (
    BucketWebhooks,
    GitWebhooks,
    WebhookRefusedError,
    register_bucket_webhooks,
    register_git_webhooks,
)

log = logging.getLogger(__name__)
WEBHOOKS = "/webhooks/"

# the one table from the watcher's errors to HTTP (an error's own status wins)
ERRORS: dict[type[Exception], int] = {
    WebhookRefusedError: 400,  # 404 not configured, 401 wrong secret, 400 not a payload
    BodyTooLargeError: 413,
    KeyRefusedError: 401,
}


class WatcherMetrics:
    """The watcher's Prometheus metrics, read from the watcher when scraped."""

    def __init__(self, watcher: DirectoryWatcher) -> None:
        self._watcher = watcher
        self.registry = CollectorRegistry()
        self.scans = Gauge("retrain_watcher_scans", "Scans of the dataset root since start",
                           registry=self.registry)
        self.emitted = Gauge("retrain_watcher_events",
                             "dataset.updated events emitted since start", registry=self.registry)
        self.age = Gauge("retrain_watcher_last_scan_age_seconds",
                         "Seconds since the last completed scan", registry=self.registry)
        self.webhooks = Counter("retrain_watcher_webhooks",
                                "Webhook deliveries by provider and outcome",
                                ["provider", "outcome"], registry=self.registry)

    def exposition(self) -> bytes:
        watcher = self._watcher
        self.scans.set(watcher.scans)
        self.emitted.set(watcher.emitted)
        self.age.set(time.time() - watcher.last_scan if watcher.last_scan else -1)
        return generate_latest(self.registry)

    def refused(self, request: Request, error: Exception, status: int) -> None:
        """A refused webhook delivery: counted by provider and status, and logged."""
        if request.url.path.startswith(WEBHOOKS):
            provider = request.url.path.rsplit("/", 1)[-1]
            self.webhooks.labels(provider, str(status)).inc()
            log.warning("%s webhook refused (%d): %s", provider, status, error)


class WatcherEndpoints:
    """The watcher's own endpoints: liveness, readiness, metrics and a rescan on request."""

    def __init__(self, watcher: DirectoryWatcher, metrics: WatcherMetrics) -> None:
        self._watcher = watcher
        self._metrics = metrics

    def livez(self) -> dict[str, str]:
        """Liveness: the process answers (a missing data folder is not a reason to restart)."""
        return {"status": "alive"}

    def healthz(self) -> JSONResponse:
        """Readiness: 503 until the data folder exists."""
        watcher = self._watcher
        body = {"root": str(watcher.root), "scans": watcher.scans, "emitted": watcher.emitted,
                "last_scan": watcher.last_scan}
        return JSONResponse(body, status_code=200 if watcher.root.is_dir() else 503)

    def metrics(self) -> Response:
        return Response(self._metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def rescan(self, key: ApiKey) -> dict[str, str]:
        """Scan now instead of at the next interval (202; the scan follows the answer)."""
        self._watcher.rescan()
        return {"rescan": "requested"}


def register_watcher_endpoints(app: FastAPI, watcher: DirectoryWatcher,
                               metrics: WatcherMetrics) -> None:
    endpoints = WatcherEndpoints(watcher, metrics)
    router = APIRouter()
    router.add_api_route("/livez", endpoints.livez, methods=["GET"])
    router.add_api_route("/healthz", endpoints.healthz, methods=["GET"])
    router.add_api_route("/metrics", endpoints.metrics, methods=["GET"])
    router.add_api_route("/rescan", endpoints.rescan, methods=["POST"], status_code=202)
    app.include_router(router)


def create_app(watcher: DirectoryWatcher, api_keys: ApiKeys | Iterable[str] = (),
               git: GitWebhooks | None = None, bucket: BucketWebhooks | None = None) -> FastAPI:
    """The watcher's app: its own endpoints (``/rescan`` guarded by ``api_keys``), the Git
    push webhooks (404 unless ``git``) and the bucket notifications (404 unless ``bucket``)."""
    app = FastAPI(title="retrain watcher", docs_url=None, redoc_url=None)
    metrics = WatcherMetrics(watcher)
    auth.install(app, ApiKeys.of(api_keys))
    json_errors(app, ERRORS, observe=metrics.refused)
    register_watcher_endpoints(app, watcher, metrics)
    register_git_webhooks(app, git, metrics.webhooks)
    register_bucket_webhooks(app, bucket, metrics.webhooks)
    return app



