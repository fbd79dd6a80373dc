"""The providers' doors: Git push webhooks (``POST /webhooks/github``, ``/webhooks/gitlab``)
and bucket notifications (``POST /webhooks/s3``, AWS's and MinIO's format).

Each provider proves itself with its own secret (GitHub's HMAC signature, GitLab's token, the
bucket notifier's bearer token), checked here; the watcher's API key is not one of them. An
accepted delivery becomes a job in a durable outbox (a fetch or a sync, after the answer);
a refused one raises ``WebhookRefusedError`` or ``core.http.BodyTooLargeError``, which the
service's one error table answers, counts and logs. Endpoints are classes registered on an
app, as KServe's ``register_v1_endpoints(app, dataplane)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from core.errors import RetrainError
from core.http import bearer, read_body, secret_matches
from core.redact import redact
from events import make_event
from events.outbox import Outbox
from events.payloads import DatasetUpdated
from services.ingest_watcher.git import (
    GitSource,
    changed_paths,
    github_signature_ok,
    push_origin,
    seen_key,
)
from services.ingest_watcher.s3 import BucketSource, notified_origin, relevant_records

log = logging.getLogger(__name__)
GITHUB_MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
GITLAB_MAX_BODY = 25 * 1024 * 1024
S3_MAX_BODY = 64 * 1024


class WebhookRefusedError(RetrainError):
    """A delivery the watcher refuses, with the status the provider sees: 404 (that provider
    is not configured), 401 (its secret is missing or wrong) or 400 (not a payload)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class GitWebhooks:
    """What the Git webhooks need: where pushes are verified against, and where accepted
    pushes wait for their fetch (a durable outbox whose sink is the fetcher)."""

    source: GitSource
    jobs: Outbox
    github_secret: str | None = None
    gitlab_token: str | None = None
    replay_ttl: int = 7 * 24 * 3600


@dataclass(frozen=True)
class BucketWebhooks:
    """Bucket notifications: the watched prefix, where accepted ones wait for their sync, and
    the bearer token the notifier presents (MinIO's webhook target ``auth_token``)."""

    source: BucketSource
    jobs: Outbox
    token: str | None = None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRefusedError(400, f"body is not valid JSON: {exc}") from None


def _unconfigured(provider: str, setting: str) -> WebhookRefusedError:
    return WebhookRefusedError(404, f"{provider} webhooks are not configured on this watcher "
                                    f"(--git and {setting})")


class GitEndpoints:
    """GitHub's and GitLab's push webhooks: verified, filtered to the watched branch and
    path, deduplicated by delivery id, and queued for a fetch."""

    def __init__(self, hooks: GitWebhooks | None, outcomes: Counter) -> None:
        self._hooks = hooks
        self._outcomes = outcomes  # deliveries by provider and outcome

    def _answer(self, provider: str, outcome: str, body: dict[str, Any],
                status: int = 200) -> JSONResponse:
        self._outcomes.labels(provider, outcome).inc()
        return JSONResponse(body, status_code=status)

    async def github(self, request: Request) -> JSONResponse:
        hooks = self._hooks
        if hooks is None or not hooks.github_secret:
            raise _unconfigured("GitHub", "RETRAIN_GITHUB_WEBHOOK_SECRET")
        body = await read_body(request, GITHUB_MAX_BODY)
        if not github_signature_ok(hooks.github_secret, body,
                                   request.headers.get("x-hub-signature-256")):
            raise WebhookRefusedError(401, "missing or wrong X-Hub-Signature-256")
        event = request.headers.get("x-github-event", "")
        if event == "ping":
            return self._answer("github", "ping", {"status": "pong"})
        if event != "push":
            return self._answer("github", "ignored",
                                {"status": f"ignored: {event or 'no'} event (only push)"})
        return self._accept_push(hooks, "github", request.headers.get("x-github-delivery"), body)

    async def gitlab(self, request: Request) -> JSONResponse:
        hooks = self._hooks
        if hooks is None or not hooks.gitlab_token:
            raise _unconfigured("GitLab", "RETRAIN_GITLAB_WEBHOOK_TOKEN")
        if secret_matches(request.headers.get("x-gitlab-token"), (hooks.gitlab_token,)) is None:
            raise WebhookRefusedError(401, "missing or wrong X-Gitlab-Token")
        body = await read_body(request, GITLAB_MAX_BODY)
        event = request.headers.get("x-gitlab-event", "")
        if event != "Push Hook":
            return self._answer("gitlab", "ignored",
                                {"status": f"ignored: {event or 'no'} event (only Push Hook)"})
        delivery = (request.headers.get("x-gitlab-event-uuid")
                    or request.headers.get("idempotency-key"))
        return self._accept_push(hooks, "gitlab", delivery, body)

    def _accept_push(self, hooks: GitWebhooks, provider: str, delivery: str | None,
                     body: bytes) -> JSONResponse:
        push = _json(body)
        if not isinstance(push, dict) or not isinstance(push.get("ref"), str):
            raise WebhookRefusedError(400, 'a push payload is a JSON object with a "ref"')
        source = hooks.source
        if push["ref"] != f"refs/heads/{source.branch}":
            return self._answer(provider, "ignored", {
                "status": f"ignored: {push['ref']} is not the watched branch {source.branch}"})
        changed = changed_paths(push)
        if changed is not None and not source.touches(changed):
            log.info("%s push touches nothing under %s: no event", provider, source.path)
            return self._answer(provider, "ignored",
                                {"status": f"ignored: no file under {source.path} changed"})
        after = str(push.get("after") or push.get("checkout_sha") or "")
        notification = make_event(
            "dataset.updated", DatasetUpdated(
                uri=redact(source.url), trigger=provider,  # type: ignore[arg-type]
                origin=push_origin(provider, push, source, delivery)),
            source=f"retrain/webhooks/{provider}", id=delivery or f"{provider}@{after}")
        # durable before the answer (fetched after it); a delivery id seen before is a replay,
        # checked and appended in one atomic step
        if delivery is None:
            hooks.jobs.put(notification)
        elif not hooks.jobs.put_once(notification, seen_key(provider, delivery), hooks.replay_ttl):
            log.info("%s delivery %s seen before: no new event", provider, delivery)
            return self._answer(provider, "replay",
                                {"status": "duplicate delivery", "delivery": delivery})
        return self._answer(provider, "accepted", {"status": "accepted: fetching",
                                                   "commit": after}, status=202)


class BucketEndpoints:
    """S3 and MinIO bucket notifications: the records under the watched prefix queue a sync."""

    def __init__(self, hooks: BucketWebhooks | None, outcomes: Counter) -> None:
        self._hooks = hooks
        self._outcomes = outcomes

    async def s3(self, request: Request) -> JSONResponse:
        hooks = self._hooks
        if hooks is None:
            raise WebhookRefusedError(404, "bucket notifications are not configured on this "
                                           "watcher (--s3)")
        token = bearer(request.headers.get("authorization"))
        if hooks.token is not None and secret_matches(token, (hooks.token,)) is None:
            raise WebhookRefusedError(401, "missing or wrong bearer token "
                                           "(RETRAIN_S3_WEBHOOK_TOKEN)", {  # RFC 6750
                                               "WWW-Authenticate": "Bearer" if token is None
                                               else 'Bearer error="invalid_token"'})
        body = _json(await read_body(request, S3_MAX_BODY))
        try:
            trigger, objects = relevant_records(body, hooks.source)
        except ValueError as exc:
            raise WebhookRefusedError(400, str(exc)) from None
        if not objects:
            self._outcomes.labels("s3", "ignored").inc()
            return JSONResponse({"status": f"ignored: no object under {hooks.source.uri}"})
        hooks.jobs.put(make_event("dataset.updated", DatasetUpdated(
            uri=hooks.source.uri, trigger=trigger,  # type: ignore[arg-type]
            origin=notified_origin(hooks.source, objects)), source=f"retrain/webhooks/{trigger}"))
        self._outcomes.labels("s3", "accepted").inc()
        return JSONResponse({"status": "accepted: syncing", "objects": len(objects)},
                            status_code=202)


def register_git_webhooks(app: FastAPI, hooks: GitWebhooks | None, outcomes: Counter) -> None:
    """``POST /webhooks/github`` and ``/webhooks/gitlab`` (404 until ``hooks`` configure them)."""
    endpoints = GitEndpoints(hooks, outcomes)
    router = APIRouter(prefix="/webhooks", tags=["Git webhooks"])
    router.add_api_route("/github", endpoints.github, methods=["POST"])
    router.add_api_route("/gitlab", endpoints.gitlab, methods=["POST"])
    app.include_router(router)


def register_bucket_webhooks(app: FastAPI, hooks: BucketWebhooks | None,
                             outcomes: Counter) -> None:
    """``POST /webhooks/s3`` (404 until ``hooks`` configure it)."""
    endpoints = BucketEndpoints(hooks, outcomes)
    router = APIRouter(prefix="/webhooks", tags=["bucket notifications"])
    router.add_api_route("/s3", endpoints.s3, methods=["POST"])
    app.include_router(router)
