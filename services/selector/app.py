"""The selector as a service: ``POST /events`` receives ``model.trained`` CloudEvents (from a
TFJob's chief, or any HTTP sender).

A candidate that is not this project's (a model outside the runs folder, a test split that
is not in the store) is refused at the door with 403 and the reason, and audited. Any other
is appended to the Redis stream before the 202, so nothing the sender was told is accepted
lives only in memory: the stream's consumer group (``judge_once``) judges it, and a selector
killed meanwhile leaves it for the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.auth import ApiKeyAlways
from events import Event, EventType
from events.dedup import Deduplicator
from events.errors import EventRefusedError
from events.payloads import ModelTrained
from events.receiver import create_receiver
from services.selector.errors import SelectorError
from services.selector.service import Selector

log = logging.getLogger(__name__)


def create_app(selector: Selector, dedup: Deduplicator, enqueue: Callable[[Event], None],
               api_keys: tuple[str, ...] = (),
               health: Callable[[], str | None] | None = None) -> Any:
    """The selector's events (``POST /events``, feeding ``enqueue``: the stream) and its
    rollback (``POST /rollback``)."""
    app = create_receiver(dedup, Admitting(selector, enqueue).dispatch, api_keys,
                          title="retrain selector", health=health)
    app.include_router(rollback_router(selector))
    return app


class Admitting:
    """What the selector does with each new event: ``model.trained`` is admitted (or refused
    at the door, 403 and audited) and queued, ``training.failed`` queued; other event types
    are acknowledged and ignored (logged), so one Argo Events trigger can fan everything out."""

    def __init__(self, selector: Selector, enqueue: Callable[[Event], None]) -> None:
        self._selector, self._enqueue = selector, enqueue

    def dispatch(self, event: Event) -> None:
        if event.type is EventType.TRAINING_FAILED:  # one of its run's trainings ended
            self._enqueue(event)
            return
        if event.type is not EventType.MODEL_TRAINED:
            log.info("selector ignores %s (id %s)", event.type.value, event.id)
            return
        assert isinstance(event.data, ModelTrained)
        problem = self._selector.refusal(event.data)
        if problem is not None:
            self._selector.refuse(event, problem)  # audited and emitted with its reason
            raise EventRefusedError(problem)
        self._enqueue(event)


def rollback_router(selector: Selector) -> APIRouter:
    """``POST /rollback``: serve the previous champion again (what ``retrain select rollback``
    does), for the dashboard on a cluster, which has no access to the promotion backend
    itself. Never open: it needs one of RETRAIN_API_KEYS (403 when none is configured)."""
    router = APIRouter()

    @router.post("/rollback")
    def rollback(request: Request, _key: ApiKeyAlways) -> JSONResponse:
        reason = request.query_params.get("reason") or "rolled back through the selector's API"
        try:
            decision = selector.rollback(reason[:500])
        except SelectorError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        return JSONResponse({"decision": decision.data.model_dump(mode="json")})

    return router
