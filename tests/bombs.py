"""Decompression bombs for the tests: images of a few hundred kilobytes that declare far
more pixels than anything here should decode."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` black pixels (zeros compress
    about 1000:1), compressed row by row so that building it costs little memory."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 and the pixels
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))
