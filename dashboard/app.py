"""``retrain ui``: the pipeline's dashboard, served from Redis and the model server alone.

``create_app`` lists what it serves: health, the JSON API (``dashboard.api``), login
(``dashboard.access``), the "try it" proxy (``dashboard.predict``) and the pages
(``dashboard.site``, rendered by ``dashboard.pages`` from the same data as the API). What they
share is one ``Dashboard`` on ``app.state`` (``dashboard.state``); who may do what is one
check (``dashboard.access`` over ``core.auth``); refusals come from one table
(``dashboard.errors``). Reading needs no key unless ``RETRAIN_UI_REQUIRE_KEY=1``; changing
anything (rollback, replaying a dead letter) always needs one of ``RETRAIN_API_KEYS``. No
CDN: the page's CSS and JavaScript are small files written here (``dashboard/static``).
"""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from core import auth
from dashboard import api, errors, predict, site, state
from dashboard.access import login
from dashboard.state import Dashboard, Rollback
from services.selector.champion import ChampionStore

STATIC = Path(__file__).parent / "static"


def create_app(client: redis.Redis, model_repo: str, *, api_keys: tuple[str, ...] = (),
               require_key: bool = False, serve_url: str | None = None,
               rollback: Rollback | None = None) -> FastAPI:
    """The dashboard on ``client``'s Redis for the champion of ``model_repo``; ``serve_url``:
    the model server "try it" asks; ``rollback``: how a rollback is done here, returning the
    decision (None: it is not offered; a ``SelectorError`` is answered 409)."""
    app = FastAPI(title="retrain ui", docs_url=None, redoc_url=None, openapi_url=None)
    state.install(app, Dashboard(client, ChampionStore(client, model_repo), require_key,
                                 serve_url, rollback))
    auth.install(app, auth.ApiKeys(tuple(api_keys)))
    errors.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in (api.health, api.reads, api.changes, login, predict.router, site.router):
        app.include_router(router)
    return app
