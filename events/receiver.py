"""A CloudEvents receiver over HTTP: ``POST /events`` decodes (binary, structured or
batched), checks the API key, drops duplicates and hands each new event on.

``dispatch`` must have made the event safe (queued durably, or handled) when it returns: the
answer 202 tells the sender it may forget the event. If it raises, the event is not marked
as seen, so the sender's retry is taken: ``EventRefusedError`` is answered 403 with its
reason, anything else (Redis away) 503 with ``Retry-After``.

The local trigger and the selector are both this receiver with their own ``dispatch``. A
dispatch that records who did something (the trigger: who approved a blocked run) is given
as ``FromSender``: it is also told who sent each event, as the receiver authenticated it
(``core.auth.identity`` of the request's API key), never what the event says of itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from core.auth import ApiKey, ApiKeys, KeyRefusedError, identity, install
from core.http import BodyTooLargeError, json_errors, read_body
from events.codec import decode
from events.dedup import Deduplicator
from events.envelope import Event
from events.errors import EventError, EventRefusedError

log = logging.getLogger(__name__)
MAX_EVENT_BODY = 64 * 1024


@dataclass(frozen=True)
class FromSender:
    """A dispatch told who sent each event: ``dispatch(event, sender)``, ``sender`` being
    ``core.auth.identity`` of the key that authenticated the request (``anonymous`` on an
    open receiver)."""

    dispatch: Callable[[Event, str], None]


Dispatch = Callable[[Event], None] | FromSender


def create_receiver(dedup: Deduplicator, dispatch: Dispatch,
                    api_keys: tuple[str, ...] = (), title: str = "retrain events",
                    health: Callable[[], str | None] | None = None,
                    duplicate: Callable[[Event], None] | None = None) -> FastAPI:
    """An app that receives events: its probes and ``POST /events``. ``health`` says what
    keeps the service from working (None: healthy); ``/healthz`` answers 503 with it, so a
    supervisor or a load balancer knows. ``duplicate`` is told of each event dropped as one
    (best effort: it may not fail the answer)."""
    app = FastAPI(title=title)
    install(app, ApiKeys(api_keys))
    json_errors(app, {KeyRefusedError: 401}, observe=_refused)
    app.include_router(probes(health))
    app.include_router(EventEndpoints(dedup, dispatch, duplicate).router())
    return app


def _refused(request: Request, exc: Exception, status: int) -> None:
    log.warning("rejected event request (%d): %s", status, exc)


def probes(health: Callable[[], str | None] | None = None) -> APIRouter:
    """``/livez`` (the process answers) and ``/healthz`` (503 with what keeps it from working)."""
    router = APIRouter()

    @router.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        problem = health() if health is not None else None
        if problem is not None:
            return JSONResponse({"status": "unhealthy", "problem": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router


def _error(status: int, message: str) -> JSONResponse:
    log.warning("rejected event request (%d): %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


def _unavailable(exc: Exception, accepted: list[str]) -> JSONResponse:
    log.warning("cannot take events now (Redis: %s)", type(exc).__name__)
    return JSONResponse({"error": "the event store is unavailable; retry later",
                         "accepted": accepted}, status_code=503, headers={"Retry-After": "1"})


class EventEndpoints:
    """``POST /events``: decode, drop duplicates, hand each new event to ``dispatch``."""

    def __init__(self, dedup: Deduplicator, dispatch: Dispatch,
                 duplicate: Callable[[Event], None] | None = None) -> None:
        self._dedup, self._dispatch, self._duplicate = dedup, dispatch, duplicate

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/events", self.receive, methods=["POST"])
        return router

    async def receive(self, request: Request, key: ApiKey) -> JSONResponse:
        try:
            body = await read_body(request, MAX_EVENT_BODY)
        except BodyTooLargeError as exc:
            return _error(413, f"event {exc}")
        try:
            events = decode(dict(request.headers), body)
        except EventError as exc:
            return _error(400, str(exc))
        accepted: list[str] = []
        duplicates: list[str] = []
        for event in events:
            try:
                first = self._dedup.first_time(event)
            except redis.RedisError as exc:
                return _unavailable(exc, accepted)
            if not first:
                self._dropped(event)
                duplicates.append(event.id)
                continue
            try:
                self._hand_on(event, key)
            except EventRefusedError as exc:
                self._forget(event)
                return _error(403, f"event {event.id}: {exc}")
            except redis.RedisError as exc:
                self._forget(event)
                return _unavailable(exc, accepted)
            accepted.append(event.id)
        return JSONResponse({"accepted": accepted, "duplicates": duplicates}, status_code=202)

    def _hand_on(self, event: Event, key: str | None) -> None:
        if isinstance(self._dispatch, FromSender):
            self._dispatch.dispatch(event, identity(key))
        else:
            self._dispatch(event)

    def _forget(self, event: Event) -> None:
        with contextlib.suppress(redis.RedisError):
            self._dedup.forget(event)

    def _dropped(self, event: Event) -> None:
        log.info("dropped duplicate event %s from %s", event.id, event.source)
        if self._duplicate is not None:
            with contextlib.suppress(redis.RedisError):
                self._duplicate(event)
