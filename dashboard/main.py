"""The dashboard, composed: ``create_ui`` wires it to the settings (``retrain ui``, the
local stack); ``serve`` runs it until stopped.

A rollback goes to the selector: in process where the stack runs one, else through the
selector's ``POST /rollback`` (``RETRAIN_UI_SELECTOR_URL``, as on a cluster, where the
dashboard has no access to the promotion backend), else through a selector built here when
the promotion backend is the local model repository.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import redis

from core.settings import Settings
from dashboard.app import create_app
from dashboard.state import Rollback


def create_ui(settings: Settings, client: redis.Redis, serve_url: str | None = None,
              rollback: Rollback | None = None) -> Any:
    return create_app(client, str(settings.model_repo.resolve()), api_keys=settings.api_keys,
                      require_key=settings.ui_require_key,
                      serve_url=settings.ui_serve_url or serve_url
                      or f"http://127.0.0.1:{settings.serve_port}", rollback=rollback)


def in_process(rollback: Callable[[str], Any]) -> Rollback:
    """A selector's own ``rollback``, answering with the decision's data."""
    return lambda reason: rollback(reason).data.model_dump(mode="json")


def through_selector(url: str, api_key: str | None) -> Rollback:
    """A rollback asked of the selector's API (its refusal raised as a ``SelectorError``)."""
    from services.selector.errors import SelectorError

    def rollback(reason: str) -> dict[str, Any]:
        try:
            answer = httpx.post(f"{url.rstrip('/')}/rollback", params={"reason": reason},
                                headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                                timeout=120)
        except httpx.HTTPError as exc:
            raise SelectorError(f"the selector did not answer: {exc}") from None
        if answer.status_code != 200:
            try:
                why = str(answer.json().get("error"))
            except ValueError:  # not the selector's JSON (a proxy's page, say)
                why = answer.text[:200]
            raise SelectorError(f"the selector refused ({answer.status_code}): {why}")
        return dict(answer.json()["decision"])

    return rollback


def serve(settings: Settings) -> None:
    """``retrain ui``: serve the dashboard on ``settings.ui_port`` until stopped."""
    from core.http import serve_forever
    from core.redis_store import open_redis

    with open_redis(settings.redis_url, settings.home) as handle:
        rollback = None
        if settings.ui_selector_url:
            rollback = through_selector(settings.ui_selector_url, settings.api_key)
        elif settings.promotion_backend == "local":
            from events.sinks import RedisStreamSink
            from services.selector.main import build_selector

            selector = build_selector(settings, handle.client,
                                      RedisStreamSink(handle.client).send)
            rollback = in_process(selector.rollback)
        print(f"dashboard http://{settings.host}:{settings.ui_port}/", flush=True)
        serve_forever(create_ui(settings, handle.client, rollback=rollback), settings.host,
                      settings.ui_port, "dashboard")
