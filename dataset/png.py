"""The images pushed most often, decoded fast: 28x28, 8-bit grayscale, non-interlaced PNGs.

Pillow spends ~100 µs of Python machinery on each 28x28 file, more than everything else an
increment costs per image. Such a PNG is decoded here with libspng (``pyspng``, the decoder
the model server uses for the same images, ``services/serving/decode.py``) after a check of
its chunks in Python: the header, every chunk's CRC (libspng would quietly drop an ancillary
chunk whose CRC is wrong, which Pillow refuses), and no critical chunk but IHDR, IDAT and IEND.
libspng returns the stored samples, as Pillow's ``convert("L")`` does for a grayscale image
(neither applies gAMA, sBIT or tRNS). Anything else (another size, colour, palette, 16-bit,
interlaced, JPEG, damaged files) returns None and goes through Pillow, which also words the
errors; ``tests/dataset/test_png.py`` checks both paths give the same pixels.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pyspng

SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDE = 28
# IHDR: 28 x 28, 8-bit, grayscale, deflate, adaptive filters, not interlaced
HEADER = SIGNATURE + struct.pack(">I4sIIBBBBB", 13, b"IHDR", SIDE, SIDE, 8, 0, 0, 0, 0)
_CRITICAL_AFTER_HEADER = (b"IDAT", b"IEND")
# the signature and IHDR with its CRC: the same 33 bytes in every image the fast path takes
_HEAD = HEADER + struct.pack(">I", zlib.crc32(HEADER[len(SIGNATURE) + 4:]))
_IEND = struct.pack(">I4sI", 0, b"IEND", zlib.crc32(b"IEND"))


def is_plain_gray28(data: bytes) -> bool:
    """Whether ``data`` is a 28x28 8-bit grayscale non-interlaced PNG whose chunks all check
    out (CRCs right, IEND reached, no critical chunk libspng and Pillow might read apart)."""
    if not data.startswith(HEADER):
        return False
    if _one_idat(data):
        return True
    at = len(SIGNATURE)
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 8 + length
        if end + 4 > len(data):
            return False  # cut short
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[at + 4:end]) != crc:
            return False
        if kind == b"IEND":
            return True
        if kind[0] < 0x61 and at != len(SIGNATURE) and kind not in _CRITICAL_AFTER_HEADER:
            return False  # PLTE, a second IHDR, or a critical chunk we do not know
        at = end + 4
    return False


def _one_idat(data: bytes) -> bool:
    """The shape most encoders write (IHDR, one IDAT, IEND), checked in a few operations; any
    other shape is left to the chunk walk of ``is_plain_gray28``."""
    if len(data) < len(_HEAD) + 8 + 4 + len(_IEND) or not data.startswith(_HEAD):
        return False
    length, kind = struct.unpack_from(">I4s", data, len(_HEAD))
    end = len(_HEAD) + 8 + length
    return (kind == b"IDAT" and data[end + 4:end + 16] == _IEND
            and zlib.crc32(data[len(_HEAD) + 4:end]) == struct.unpack_from(">I", data, end)[0])


def _adler_ok(data: bytes) -> bool:
    """The image data's zlib stream (its IDAT chunks joined) inflates whole and its Adler-32
    trailer matches: what zlib, and so Pillow, checks; libspng does not. The chunks are
    already known well formed (``is_plain_gray28``)."""
    stream, at = [], len(_HEAD)
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IDAT":
            stream.append(data[at + 8:at + 8 + length])
        at += 12 + length
    try:
        zlib.decompress(b"".join(stream))
    except zlib.error:
        return False
    return True


def decode_gray28(data: bytes) -> np.ndarray | None:
    """The (28, 28) uint8 pixels of a PNG ``is_plain_gray28`` accepts and libspng decodes,
    else None (the caller's reference decoder decides, and words any error)."""
    if not is_plain_gray28(data):
        return None
    if not _adler_ok(data):  # libspng does not check zlib's trailer
        return None
    try:
        pixels = pyspng.load(data)
    except RuntimeError:  # a damaged stream: Pillow says how
        return None
    if pixels.shape != (SIDE, SIDE) or pixels.dtype != np.uint8:
        return None
    return pixels
