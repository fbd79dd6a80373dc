"""The dashboard, composed: ``create_ui`` wires it to the settings (``retrain ui``, the
local stack); ``serve`` runs it until stopped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from core.settings import Settings
from services.ui.app import create_app


def create_ui(settings: Settings, client: redis.Redis, serve_url: str | None = None,
              rollback: Callable[[str], Any] | None = None) -> Any:
    return create_app(client, str(settings.model_repo.resolve()), api_keys=settings.api_keys,
                      require_key=settings.ui_require_key,
                      serve_url=settings.ui_serve_url or serve_url
                      or f"http://127.0.0.1:{settings.serve_port}", rollback=rollback)


def serve(settings: Settings) -> None:
    """``retrain ui``: serve the dashboard on ``settings.ui_port`` until stopped. Rollback is
    offered where the selector's promotion backend is the local model repository."""
    from core.http import serve_forever
    from core.redis_store import open_redis

    with open_redis(settings.redis_url, settings.home) as handle:
        rollback = None
        if settings.promotion_backend == "local":
            from events.sinks import RedisStreamSink
            from services.selector.main import build_selector

            selector = build_selector(settings, handle.client,
                                      RedisStreamSink(handle.client).send)
            rollback = selector.rollback
        print(f"dashboard http://{settings.host}:{settings.ui_port}/", flush=True)
        serve_forever(create_ui(settings, handle.client, rollback=rollback), settings.host,
                      settings.ui_port, "dashboard")
