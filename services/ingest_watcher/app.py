"""The watcher's HTTP face: health, Prometheus metrics, and ``POST /rescan`` so a webhook
(GitHub push, a bucket notification, a calendar) can ask for a scan now."""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

from fastapi import FastAPI, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from services.ingest_watcher.watcher import DirectoryWatcher


def create_app(watcher: DirectoryWatcher, api_keys: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI(title="retrain watcher", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    scans = Gauge("retrain_watcher_scans", "Scans of the dataset root since start", registry=registry)
    emitted = Gauge("retrain_watcher_events", "dataset.updated events emitted since start",
                    registry=registry)
    age = Gauge("retrain_watcher_last_scan_age_seconds", "Seconds since the last completed scan",
                registry=registry)

    def authorized(authorization: str | None) -> bool:
        if not api_keys:
            return True
        token = (authorization or "").removeprefix("Bearer ").strip()
        return any(hmac.compare_digest(token.encode(), key.encode()) for key in api_keys)

    @app.get("/healthz")
    def healthz() -> Any:
        body = {"root": str(watcher.root), "scans": watcher.scans, "emitted": watcher.emitted,
                "last_scan": watcher.last_scan}
        return JSONResponse(body, status_code=200 if watcher.root.is_dir() else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        scans.set(watcher.scans)
        emitted.set(watcher.emitted)
        age.set(time.time() - watcher.last_scan if watcher.last_scan else -1)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/rescan", status_code=202)
    def rescan(authorization: Annotated[str | None, Header()] = None) -> Any:
        if not authorized(authorization):
            return JSONResponse({"error": "missing or wrong API key"}, status_code=401)
        watcher.rescan()
        return {"rescan": "requested"}

    return app
