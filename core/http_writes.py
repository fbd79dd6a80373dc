"""Each HTTP response in one write: the protocol every uvicorn server of ours runs.

uvicorn writes a response's status line and headers with one ``transport.write`` and its body
with another. Nagle is off on our sockets (``core.http.bind``), so each write is a system call
and a TCP segment of its own; on the machines we measured a ``send`` costs ~15 µs of CPU and
holds the event loop ~35 µs, and at thousands of requests a second the model server's event
loop spent a third of its time in those two calls. Here a response's head is held until its
body's first write, and the two go out as one ``send`` at that write: nothing waits for
anything but its own body, which uvicorn writes in the same step when the app sends it at once
(as every response of ours does). The model server goes one step further
(``WaveWriteHttpTools``). Interim responses (``100 Continue``, ``101`` of an upgrade)
and everything that is not a response's head are written at once, as before; a body of more
than ``JOINED_BYTES`` is written after the head rather than copied into it. A head whose body
never comes in that step (a HEAD request, a body sent later) goes out from a callback
scheduled when it was held, and before the connection is closed or the peer's end of stream is
handled (uvloop closes the transport itself then, not through us). Measured with the model
server under 32 clients: +13 % requests a second (``benchmarks/README.md``, the serving
section).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JOINED_BYTES = 64 * 1024
_HEAD = b"HTTP/1.1 "


def _final_head(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is a whole response head that is not an interim (1xx) one, as
    uvicorn writes it: the status line and headers in one write."""
    return (len(data) <= JOINED_BYTES and bytes(data[:9]) == _HEAD and data[9:10] != b"1"
            and bytes(data[-4:]) == b"\r\n\r\n")


class HeldWrites:
    """A transport whose response heads wait for their bodies' first write; with ``wave``,
    the joined response waits further, for the callback scheduled when its head was held."""

    __slots__ = ("_head", "_joined", "_loop", "_transport", "_wave")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 wave: bool = False) -> None:
        self._transport = transport
        self._loop = loop
        self._wave = wave
        self._head: bytes | None = None  # what is held: a head, or (wave) a head and body
        self._joined = False  # whether a body's first write is held with it

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._head
        if held is not None:
            self._head = None
            if not self._joined and len(data) <= JOINED_BYTES:
                if self._wave:  # sent by the callback scheduled with the head
                    self._head, self._joined = held + bytes(data), True
                else:
                    self._transport.write(held + bytes(data))
                return
            self._transport.write(held)  # a body's later writes go out as they come
        elif _final_head(data):
            self._head, self._joined = bytes(data), False
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send a head still held (dropped when the connection is closing: nobody to read it)."""
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response's head sent with its body."""

    wave = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldWrites(transport, self.loop, self.wave))  # type: ignore[arg-type]

    def eof_received(self) -> bool | None:
        """The peer will send no more (a half-close): a head still held goes out before the
        event loop closes the transport on its own."""
        self.transport.flush()  # type: ignore[attr-defined]
        return super().eof_received()


class WaveWriteHttpTools(OneWriteHttpTools):
    """The model server's: each response, head and body joined, sent once the event loop has
    run the callbacks that were ready with it (the other answers of the same model call:
    their tasks were woken together) and polled once more. Measured at 32 clients, 10 % more
    requests a second than sending each at its body's write: the answers of one model call
    leave together, the clients' next requests come back together and make fuller batches.
    Only for a server whose handlers never block the event loop: behind a handler that
    blocks, a finished answer would wait as long (the other servers use
    ``OneWriteHttpTools``); in the model server, the longest wait is another request's JSON
    parsed in the same turn (its body is at most ``RETRAIN_SERVE_MAX_BODY``). Only a head
    and its body's first write are held: a body's later writes go out as they come."""

    wave = True
