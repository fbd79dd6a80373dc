"""Running an ASGI app with uvicorn on a socket bound up front (so a taken port is a clear error)."""

from __future__ import annotations

import errno
import hmac
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import uvicorn

from core import redact
from core.errors import PortInUseError, RetrainError
from core.http_writes import OneWriteHttpTools


def bind(host: str, port: int, service: str) -> socket.socket:
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do, and
    # with Nagle on every small response waits ~40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port, service) from None
        raise RetrainError(f"{service}: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class BackgroundServer:
    """A uvicorn server in a thread, on an already-bound socket."""

    def __init__(self, app: object, sock: socket.socket, name: str,
                 http: type[OneWriteHttpTools] = OneWriteHttpTools) -> None:
        self.sock = sock
        self.name = name
        self.port = sock.getsockname()[1]
        self.host = sock.getsockname()[0]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,  # type: ignore[arg-type]
                                http=http)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=name, daemon=True)

    @property
    def thread_id(self) -> int | None:
        """The operating system's id of the server's thread (its event loop), once started."""
        return self._thread.native_id

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RetrainError(f"{self.name} did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()


def serve_forever(app: object, host: str, port: int | socket.socket, service: str,
                  http: type[OneWriteHttpTools] = OneWriteHttpTools) -> None:
    """Foreground serving for ``retrain serve``/``watch``: binds first (``port``, or a socket
    the caller bound already), then runs uvicorn."""
    sock = port if isinstance(port, socket.socket) else bind(host, port, service)
    # no access log: a line per request costs a model server at thousands of requests/s
    # more than its JSON (the request counters and latencies are in /metrics)
    config = uvicorn.Config(app, log_level="info", lifespan="on", access_log=False,  # type: ignore[arg-type]
                            http=http)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # they have their own handlers
        redact.install(logging.getLogger(name))
    uvicorn.Server(config).run(sockets=[sock])


class BodyTooLargeError(RetrainError):
    """A request body over the endpoint's limit (each service answers it with 413)."""


async def read_body(request: Any, limit: int) -> bytes:
    """A Starlette request's body, refused as soon as it is known to exceed ``limit`` bytes
    (``read_limited``)."""
    return await read_limited(request.stream(), request.headers.get("content-length"), limit)


async def read_limited(chunks: AsyncIterator[bytes], content_length: str | None,
                       limit: int) -> bytes:
    """A body arriving in ``chunks``, refused as soon as it is known to exceed ``limit``
    bytes: by its Content-Length before anything is read, or while it streams in."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise BodyTooLargeError(f"body of {content_length} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise BodyTooLargeError(f"body exceeds the limit of {limit} bytes")
    return bytes(body)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case, as RFC
    7235 has it); None for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def secret_matches(given: str | None, secrets: Iterable[str]) -> str | None:
    """The secret ``given`` equals (compared in constant time, as bytes, so any header text is
    safe), or None."""
    if given is None:
        return None
    presented = given.encode("utf-8", "surrogateescape")
    for secret in secrets:
        if hmac.compare_digest(presented, secret.encode()):
            return secret
    return None


def json_errors(app: Any, table: Mapping[type[Exception], int],
                observe: Callable[[Any, Exception, int], None] | None = None) -> None:
    """A service's one table from its errors to HTTP: each is answered ``{"error": message}``
    with its status (an error's own ``status`` and ``headers`` attributes, where it has them,
    win: ``core.auth.KeyRefusedError`` carries 401 or 403 and its ``WWW-Authenticate``).
    ``observe(request, error, status)``, if given, is told of each refusal before it is
    answered (a service's counter or log line)."""
    from starlette.responses import JSONResponse

    def handler_for(status: int) -> Any:
        async def answer(request: Any, exc: Exception) -> JSONResponse:
            code = getattr(exc, "status", status)
            if observe is not None:
                observe(request, exc, code)
            return JSONResponse({"error": str(exc)}, status_code=code,
                                headers=getattr(exc, "headers", None))
        return answer

    for kind, status in table.items():
        app.add_exception_handler(kind, handler_for(status))
