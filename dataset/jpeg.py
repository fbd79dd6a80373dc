"""Grayscale 28x28 JPEGs, decoded fast: libjpeg-turbo through ``simplejpeg``.

Pillow spends ~80-130 µs on each 28x28 JPEG, most of it Python machinery around the same
library; ``simplejpeg`` calls libjpeg-turbo directly in ~13 µs. A JPEG whose header says
28 x 28 and one gray component is decoded here with the slow exact IDCT (islow, Pillow's
default too) and ``strict`` on, so a truncated or damaged file raises instead of being
patched up; it then goes through Pillow, which words the error. Colour JPEGs (whose
conversion to gray Pillow does its own way), other sizes and anything unreadable return
None and go through Pillow; ``tests/dataset/test_jpeg.py`` checks both give the same pixels.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

SOI = b"\xff\xd8"
SIDE = 28


def decode_gray28(data: bytes) -> np.ndarray | None:
    """The (28, 28) uint8 pixels of a 28x28 grayscale JPEG, else None (the caller's
    reference decoder decides, and words any error)."""
    if not data.startswith(SOI):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if (height, width, colorspace) != (SIDE, SIDE, "Gray"):
            return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=False, strict=True)
    except ValueError:  # damaged or cut short: Pillow says how
        return None
    return pixels[:, :, 0] if pixels.shape == (SIDE, SIDE, 1) else None
