"""An image's declared size, read from its header before anything is decoded.

A PNG of a few kilobytes can declare 20,000 × 20,000 pixels and cost gigabytes once decoded;
so every decoder here (the model server, ingestion) first reads width and height from the
header of the formats TensorFlow's ``decode_image`` reads (PNG, JPEG, GIF, BMP) and refuses
what declares more than a limit, in microseconds. ``services.trainer.export`` puts the same
check in the exported SavedModel's graph for TF Serving users.
"""

from __future__ import annotations

import struct

MAX_PIXELS = 1 << 20  # a megapixel: ample for 28x28 classification, a few MB decoded
MAX_SIDE = 16384
FORMATS = "PNG, JPEG, GIF or BMP"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header declares them, or None for an unknown or truncated
    header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack_from("<HH", data, 6)
        return width, height
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack_from("<ii", data, 18)
        return abs(width), abs(height)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header: broken
            return None
        at += 2 + length
    return None


def size_problem(data: bytes, max_pixels: int = MAX_PIXELS, *,
                 unknown_is_a_problem: bool = True) -> str | None:
    """Why ``data`` must not be decoded (too many pixels declared, or, unless
    ``unknown_is_a_problem`` is False, a header this module cannot read), or None."""
    size = declared_size(data)
    if size is None:
        return f"not a {FORMATS} image (or its header is cut short)" if unknown_is_a_problem else None
    width, height = size
    if width == 0 or height == 0:
        return f"declares an empty image ({width} x {height})"
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        return (f"declares {width} x {height} pixels; the limit is {max_pixels:,} pixels "
                f"and {MAX_SIDE} per side")
    return None
