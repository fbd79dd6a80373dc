"""The dashboard's JSON API: health, what the pages show (``reads``: a key only when reading
requires one) and what changes something (``changes``: always a bearer key)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from core.auth import ApiKeyAlways
from core.http import read_body
from dashboard import data
from dashboard.access import READING
from dashboard.errors import BadRequestError, NotOfferedError
from dashboard.state import Ctx
from events.dead_letters import replay as replay_dead

MAX_REPLAY_BYTES = 4096
Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=data.MAX_PAGE)]
EventLimit = Annotated[int, Query(ge=1, le=data.MAX_EVENTS)]

health = APIRouter()
reads = APIRouter(prefix="/api", dependencies=READING)
changes = APIRouter(prefix="/api")


@health.get("/livez")
def livez() -> dict[str, str]:
    return {"status": "alive"}


@health.get("/healthz")
def healthz(dashboard: Ctx) -> JSONResponse:
    """Ready while Redis answers (everything shown is read from it)."""
    try:
        dashboard.client.ping()
    except redis.RedisError as exc:
        return JSONResponse({"status": "unavailable", "problem": f"Redis: {exc}"}, 503)
    return JSONResponse({"status": "ok"})


@reads.get("/overview")
def overview(dashboard: Ctx, offset: Offset = 0, limit: Limit = data.PAGE) -> dict[str, Any]:
    return data.overview(dashboard, offset, limit)


@reads.get("/runs")
def runs(dashboard: Ctx, offset: Offset = 0, limit: Limit = data.PAGE) -> dict[str, Any]:
    return data.clean(data.runs(dashboard.client, offset, limit))


@reads.get("/runs/{run_id}")
def run(dashboard: Ctx, run_id: str) -> dict[str, Any]:
    return data.run(dashboard, run_id)


@reads.get("/models")
def models(dashboard: Ctx) -> dict[str, Any]:
    return data.champions(dashboard.champions)


@reads.get("/lineage/{version}")
def lineage(dashboard: Ctx, version: int) -> dict[str, Any]:
    """Why ``version`` is served: its decision, model, training, dataset, validation, run
    and the events that caused it (404 for a version the records do not hold)."""
    return data.lineage(dashboard, version)


@reads.get("/events")
def events(dashboard: Ctx, limit: EventLimit = data.EVENTS) -> dict[str, Any]:
    return data.events(dashboard.client, limit)


@changes.post("/rollback")
def rollback(dashboard: Ctx, _key: ApiKeyAlways) -> dict[str, Any]:
    """Serve the previous champion again (the selector's refusal is a 409)."""
    if dashboard.rollback is None:
        raise NotOfferedError("rollback is done by the selector here: retrain select rollback")
    return data.clean({"decision": dashboard.rollback("rolled back from the dashboard")})


@changes.post("/dead-letters/replay")
async def replay(request: Request, dashboard: Ctx, _key: ApiKeyAlways) -> dict[str, Any]:
    """Put one dead letter (``{"stream": ..., "id": ...}``) back where it came from."""
    try:
        body = json.loads(await read_body(request, MAX_REPLAY_BYTES))
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise BadRequestError('expected {"stream": ..., "id": ...}')
    try:
        done = replay_dead(dashboard.client, [body["id"]], body.get("stream"))
    except (ValueError, KeyError) as exc:
        raise BadRequestError(str(exc)) from None
    return {"replayed": [d.entry_id for d in done]}
