"""The watcher's HTTP face: health, Prometheus metrics, ``POST /rescan`` so a webhook
(a bucket notification, a calendar) can ask for a scan now, and the Git push webhooks
``POST /webhooks/github`` and ``POST /webhooks/gitlab``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from core.http import BodyTooLargeError, bearer, read_body, secret_matches
from core.redact import redact
from events import make_event
from events.outbox import Outbox
from events.payloads import DatasetUpdated
from services.ingest_watcher.git import GitSource, changed_paths, github_signature_ok, seen_key
from services.ingest_watcher.s3 import BucketSource, relevant_records
from services.ingest_watcher.watcher import DirectoryWatcher

log = logging.getLogger(__name__)
GITHUB_MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
GITLAB_MAX_BODY = 25 * 1024 * 1024
S3_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class BucketWebhooks:
    """Bucket notifications: the watched prefix, where accepted ones wait for their sync, and
    the bearer token the notifier presents (MinIO's webhook target ``auth_token``)."""

    source: BucketSource
    jobs: Outbox
    token: str | None = None


@dataclass(frozen=True)
class GitWebhooks:
    """What the Git webhooks need: where pushes are verified against, and where accepted
    pushes wait for their fetch (a durable outbox whose sink is the fetcher)."""

    source: GitSource
    jobs: Outbox
    github_secret: str | None = None
    gitlab_token: str | None = None
    replay_ttl: int = 7 * 24 * 3600


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_limited(request: Request, limit: int) -> bytes:
    try:
        return await read_body(request, limit)
    except BodyTooLargeError as exc:
        raise _Refused(413, str(exc)) from None


def create_app(watcher: DirectoryWatcher, api_keys: tuple[str, ...] = (),
               git: GitWebhooks | None = None, bucket: BucketWebhooks | None = None) -> FastAPI:
    app = FastAPI(title="retrain watcher", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    scans = Gauge("retrain_watcher_scans", "Scans of the dataset root since start", registry=registry)
    emitted = Gauge("retrain_watcher_events", "dataset.updated events emitted since start",
                    registry=registry)
    age = Gauge("retrain_watcher_last_scan_age_seconds", "Seconds since the last completed scan",
                registry=registry)
    webhooks = Counter("retrain_watcher_webhooks", "Webhook deliveries by provider and outcome",
                       ["provider", "outcome"], registry=registry)

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        provider = request.url.path.rsplit("/", 1)[-1]
        webhooks.labels(provider, str(exc.status)).inc()
        log.warning("%s webhook refused (%d): %s", provider, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    def authorized(authorization: str | None) -> bool:
        return not api_keys or secret_matches(bearer(authorization), api_keys) is not None

    @app.get("/livez")
    def livez() -> dict[str, str]:
        """Liveness: the process answers (a missing data folder is not a reason to restart)."""
        return {"status": "alive"}

    @app.get("/healthz")
    def healthz() -> Any:
        """Readiness: 503 until the data folder exists."""
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

    def _accept_push(provider: str, delivery: str | None, body: bytes) -> JSONResponse:
        assert git is not None
        try:
            push = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(push, dict) or not isinstance(push.get("ref"), str):
            raise _Refused(400, 'a push payload is a JSON object with a "ref"')
        if push["ref"] != f"refs/heads/{git.source.branch}":
            webhooks.labels(provider, "ignored").inc()
            return JSONResponse({"status": f"ignored: {push['ref']} is not the watched branch "
                                           f"{git.source.branch}"})
        changed = changed_paths(push)
        if changed is not None and not git.source.touches(changed):
            webhooks.labels(provider, "ignored").inc()
            log.info("%s push touches nothing under %s: no event", provider, git.source.path)
            return JSONResponse({"status": f"ignored: no file under {git.source.path} changed"})
        after = str(push.get("after") or push.get("checkout_sha") or "")
        notification = make_event(
            "dataset.updated", DatasetUpdated(uri=redact(git.source.url), trigger=provider),  # type: ignore[arg-type]
            source=f"retrain/webhooks/{provider}", id=delivery or f"{provider}@{after}")
        # durable before the answer (fetched after it); a delivery id seen before is a replay,
        # checked and appended in one atomic step
        if delivery is None:
            git.jobs.put(notification)
        elif not git.jobs.put_once(notification, seen_key(provider, delivery), git.replay_ttl):
            webhooks.labels(provider, "replay").inc()
            log.info("%s delivery %s seen before: no new event", provider, delivery)
            return JSONResponse({"status": "duplicate delivery", "delivery": delivery})
        webhooks.labels(provider, "accepted").inc()
        return JSONResponse({"status": "accepted: fetching", "commit": after}, status_code=202)

    @app.post("/webhooks/github")
    async def github(request: Request) -> JSONResponse:
        if git is None or not git.github_secret:
            raise _Refused(404, "GitHub webhooks are not configured on this watcher "
                                "(--git and RETRAIN_GITHUB_WEBHOOK_SECRET)")
        body = await _read_limited(request, GITHUB_MAX_BODY)
        if not github_signature_ok(git.github_secret, body, request.headers.get("x-hub-signature-256")):
            raise _Refused(401, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        if event == "ping":
            webhooks.labels("github", "ping").inc()
            return JSONResponse({"status": "pong"})
        if event != "push":
            webhooks.labels("github", "ignored").inc()
            return JSONResponse({"status": f"ignored: {event or 'no'} event (only push)"})
        return _accept_push("github", request.headers.get("x-github-delivery"), body)

    @app.post("/webhooks/gitlab")
    async def gitlab(request: Request) -> JSONResponse:
        if git is None or not git.gitlab_token:
            raise _Refused(404, "GitLab webhooks are not configured on this watcher "
                                "(--git and RETRAIN_GITLAB_WEBHOOK_TOKEN)")
        if secret_matches(request.headers.get("x-gitlab-token"), (git.gitlab_token,)) is None:
            raise _Refused(401, "missing or wrong X-Gitlab-Token")
        body = await _read_limited(request, GITLAB_MAX_BODY)
        event = request.headers.get("x-gitlab-event", "")
        if event != "Push Hook":
            webhooks.labels("gitlab", "ignored").inc()
            return JSONResponse({"status": f"ignored: {event or 'no'} event (only Push Hook)"})
        delivery = request.headers.get("x-gitlab-event-uuid") or request.headers.get("idempotency-key")
        return _accept_push("gitlab", delivery, body)

    @app.post("/webhooks/s3")
    async def s3(request: Request) -> JSONResponse:
        if bucket is None:
            raise _Refused(404, "bucket notifications are not configured on this watcher (--s3)")
        if bucket.token is not None:
            if secret_matches(bearer(request.headers.get("authorization")), (bucket.token,)) is None:
                raise _Refused(401, "missing or wrong bearer token (RETRAIN_S3_WEBHOOK_TOKEN)")
        body = await _read_limited(request, S3_MAX_BODY)
        try:
            trigger, keys = relevant_records(json.loads(body), bucket.source)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(400, f"body is not valid JSON: {exc}") from None
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        if not keys:
            webhooks.labels("s3", "ignored").inc()
            return JSONResponse({"status": f"ignored: no object under {bucket.source.uri}"})
        bucket.jobs.put(make_event("dataset.updated", DatasetUpdated(
            uri=bucket.source.uri, trigger=trigger), source=f"retrain/webhooks/{trigger}"))  # type: ignore[arg-type]
        webhooks.labels("s3", "accepted").inc()
        return JSONResponse({"status": "accepted: syncing", "objects": len(keys)}, status_code=202)

    return app
