"""Each response in one write (``core.http_writes``), on a real uvicorn server of ours: counted
by the kernel (the server thread's write system calls, ``/proc/self/task/TID/io``), and read
back whole by a real client, whatever the response's size or shape."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.http import BackgroundServer, bind
from core.http_writes import JOINED_BYTES, OneWriteHttpTools, WaveWriteHttpTools

pytestmark = [pytest.mark.integration]
BIG = bytes(range(256)) * (3 * JOINED_BYTES // 256)  # three times what is ever held


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    path = scope["path"]
    if path == "/busy":  # answers, then the event loop stays busy (as with other requests' work)
        await asyncio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
        time.sleep(0.3)  # noqa: ASYNC251 - the event loop busy on purpose
        return
    if path == "/block":  # the loop blocked before answering (a synchronous call, say)
        time.sleep(0.3)  # noqa: ASYNC251
    if path == "/pause":
        time.sleep(0.05)  # noqa: ASYNC251
    if path == "/stream":  # chunked: no content-length, the body in pieces, then the end
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/many":  # a body in 200 pieces of 1 KiB, all in one step of the loop
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(200 * 1024).encode())]})
        for piece in range(200):
            await send({"type": "http.response.body", "body": bytes([piece]) * 1024,
                        "more_body": piece < 199})
        return
    body = BIG if path == "/big" else b'{"ok":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": bytearray(body)})  # a mutable buffer


@pytest.fixture(scope="module", params=[OneWriteHttpTools, WaveWriteHttpTools],
                ids=["at-the-body", "by-wave"])
def server(request: pytest.FixtureRequest) -> Iterator[BackgroundServer]:
    running = BackgroundServer(app, bind("127.0.0.1", 0, "test"), "http-writes-test",
                               http=request.param).start()
    yield running
    running.stop()


def writes(server: BackgroundServer) -> int:
    """Write system calls made so far by the server's thread (its event loop)."""
    with open(f"/proc/self/task/{server.thread_id}/io") as counters:
        return next(int(line.split()[1]) for line in counters if line.startswith("syscw"))


def test_a_response_is_one_write(server: BackgroundServer) -> None:
    client = http.client.HTTPConnection(server.host, server.port, timeout=10)
    client.request("POST", "/small", body=b"{}")
    assert client.getresponse().read() == b'{"ok":true}'
    before = writes(server)
    for _ in range(50):
        client.request("POST", "/small", body=b"{}")
        answer = client.getresponse()
        assert (answer.status, answer.read()) == (200, b'{"ok":true}')
    assert writes(server) - before == 50  # uvicorn alone writes each response's head apart


def test_large_and_streamed_bodies_arrive_whole(server: BackgroundServer) -> None:
    client = http.client.HTTPConnection(server.host, server.port, timeout=10)
    client.request("GET", "/big")
    assert client.getresponse().read() == BIG
    client.request("GET", "/stream")
    streamed = client.getresponse()
    assert streamed.getheader("transfer-encoding") == "chunked"
    assert streamed.read() == b"one,two,three"
    client.request("GET", "/small")  # the connection is still in step after both
    assert client.getresponse().read() == b'{"ok":true}'


def test_only_a_head_and_its_first_piece_are_held(server: BackgroundServer) -> None:
    """A body written in many pieces goes out as they come (each piece a write after the
    first), not gathered into one growing buffer sent at the end: memory stays one piece."""
    client = http.client.HTTPConnection(server.host, server.port, timeout=10)
    before = writes(server)
    client.request("GET", "/many")
    assert client.getresponse().read() == b"".join(bytes([n]) * 1024 for n in range(200))
    assert writes(server) - before >= 199


def test_what_is_held_is_sent_before_the_connection_closes(server: BackgroundServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        raw.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    assert body == b'{"ok":true}'


def test_a_head_without_a_body_is_sent_when_the_client_half_closes(server: BackgroundServer) -> None:
    """A HEAD request's answer has no body write to join: its head is held until a callback.
    The client shuts its sending side while the event loop is still busy after answering;
    the loop then handles that end of stream first and closes the connection on its own, and
    the head must have gone out before."""
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        raw.sendall(b"HEAD /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the answer is written; the loop's turn goes on for 0.2 s more
        raw.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"content-length: 11\r\n\r\n")


def test_a_finished_response_waits_for_no_other_request() -> None:
    """A response goes out when its body is written, not after other requests' work. Two
    requests reach the loop together while it is busy: this one, answered at once, then one
    that blocks the loop 0.3 s before answering (a synchronous call, say). The protocol of
    every server but the model server's (``WaveWriteHttpTools``, which would wait: its
    handlers never block)."""
    server = BackgroundServer(app, bind("127.0.0.1", 0, "test"), "http-writes-test").start()
    conns = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(3)]
    try:
        busy, fast, slow = conns
        for conn in conns:  # each accepted and idle
            conn.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(65536)
        busy.sendall(b"GET /pause HTTP/1.1\r\nHost: x\r\n\r\n")  # the loop busy 50 ms
        time.sleep(0.01)
        started = time.perf_counter()
        fast.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.002)
        slow.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = fast.recv(65536)
        waited = time.perf_counter() - started
        slow.recv(65536)
        busy.recv(65536)
    finally:
        for conn in conns:
            conn.close()
        server.stop()
    assert answer.endswith(b'{"ok":true}')
    assert waited < 0.25  # /block holds the loop 0.3 s once /small is answered
