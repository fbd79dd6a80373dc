"""The image nearly every client sends, decoded without the SavedModel's per-image loop.

The exported ``serving_default`` decodes encoded images one at a time in a ``tf.map_fn`` loop
whose body reads the header, refuses oversized images, picks a decoder, converts colours
and resizes: about 0.1 ms of loop machinery per image, more than the model costs. A
Fashion-MNIST-shaped PNG (28x28, 8-bit grayscale, not interlaced, no transparency or colour
chunks) needs none of it. The server decodes those with libspng (``pyspng``, ~6 µs each)
and hands the pixels, scaled as ``serving_default`` scales them, to the model's
``predict_images`` signature: one model call per batch, the very pixels ``serving_default``
computes, and its probabilities to float32 rounding (``tests/services/serving/test_decode.py``). Anything else, and any image libspng
cannot read, goes the model's own way, errors included.
"""

from __future__ import annotations

import struct

import numpy as np
import pyspng

SIDE = 28
# signature, IHDR's length and type, 28 x 28, 8-bit, grayscale, deflate, adaptive filters,
# not interlaced
HEADER = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBB", 13, b"IHDR", SIDE, SIDE, 8, 0, 0, 0, 0)
# chunks that do not change the decoded pixels (tRNS, gAMA, sBIT, PLTE... do, or may)
PLAIN_CHUNKS = frozenset({b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"pHYs", b"tIME"})


class UndecodableError(Exception):
    """libspng could not read one of the images (the model's own decoder will say why)."""


def is_plain_png28(data: bytes) -> bool:
    """Whether ``data`` is a PNG decoded here exactly as ``serving_default`` would decode it.
    Reads the chunk headers only (a few microseconds); libspng checks the rest."""
    if not data.startswith(HEADER):
        return False
    at = len(HEADER) + 4  # past IHDR's CRC
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"IEND":
            return True
        if kind not in PLAIN_CHUNKS:
            return False
        at += 12 + length
    return False


def decode_plain_pngs(images: list[bytes]) -> np.ndarray:
    """(n, 28, 28) float32 pixels in 0..1 from images ``is_plain_png28`` accepted: what
    ``serving_default`` computes before the model (its resize to 28x28 is exact here)."""
    pixels = np.empty((len(images), SIDE, SIDE), np.uint8)
    for n, image in enumerate(images):
        try:
            decoded = pyspng.load(image)
        except RuntimeError as exc:  # damaged: a bad CRC, a cut stream
            raise UndecodableError(str(exc)) from None
        if decoded.shape != (SIDE, SIDE):
            raise UndecodableError(f"decoded to shape {decoded.shape}")
        pixels[n] = decoded
    return pixels.astype(np.float32) / np.float32(255.0)
