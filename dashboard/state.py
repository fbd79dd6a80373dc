"""What every route of the dashboard reads from: one ``Dashboard`` per app, on ``app.state``,
handed to a route by the ``Ctx`` dependency (no closures over it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Request

from services.selector.champion import ChampionStore

Rollback = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Dashboard:
    """``client``: the Redis everything shown is read from; ``champions``: the served model's
    record; ``require_key``: reading needs a key too; ``serve_url``: the model server "try
    it" asks; ``rollback``: how a rollback is done here, returning the decision (None: it is
    not offered)."""

    client: redis.Redis
    champions: ChampionStore
    require_key: bool = False
    serve_url: str | None = None
    rollback: Rollback | None = None


def install(app: FastAPI, dashboard: Dashboard) -> None:
    app.state.dashboard = dashboard


async def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard | None = getattr(request.app.state, "dashboard", None)
    if found is None:
        raise RuntimeError("dashboard.state.install was not called on this app")
    return found


Ctx = Annotated[Dashboard, Depends(dashboard_of)]
