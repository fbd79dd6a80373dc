"""Each HTTP response in one write: the protocol every uvicorn server of ours runs.

uvicorn writes a response's status line and headers with one ``transport.write`` and its body
with another. Nagle is off on our sockets (``core.http.bind``), so each write is a system call
and a TCP segment of its own; on the machines we measured a ``send`` costs ~15 µs of CPU and
holds the event loop ~35 µs, and at thousands of requests a second the model server's event
loop spent a third of its time in those two calls. Here the writes a connection makes are
held and go out together from a callback scheduled with the first of them (under uvloop it
runs after the I/O callbacks of the next poll): a response written at once, head and body,
is one ``send``; one written over several turns, or a body past ``HELD_BYTES``, is several,
as before. A write that would hold more than ``HELD_BYTES`` goes out at once after what was
held, so a large or streamed body still meets the transport's flow control
(``pause_writing``) as it did. What is held is sent before the connection is closed through
it, and before the peer's end of stream is handled (uvloop closes the transport itself then,
not through us). Measured with the model server under 32 clients: +13 % requests a second
(``benchmarks/README.md``, the serving section).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HELD_BYTES = 64 * 1024


class HeldWrites:
    """A transport whose writes are joined until the end of the event loop's turn."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._size + len(data) > HELD_BYTES:
            self.flush()
            self._transport.write(data)
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))  # a caller may reuse a mutable buffer after writing it
        self._size += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held (dropped when the connection is closing: nobody to send it to)."""
        held, self._held, self._size = self._held, [], 0
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, its transport's writes held until the turn ends."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldWrites(transport, self.loop))  # type: ignore[arg-type]

    def eof_received(self) -> bool | None:
        """The peer will send no more (a half-close): what is held goes out before the event
        loop closes the transport on its own, as the writes of stock uvicorn already had."""
        self.transport.flush()  # type: ignore[attr-defined]
        return super().eof_received()
