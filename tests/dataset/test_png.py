"""The grayscale PNG fast path agrees with Pillow, and hands everything else to Pillow."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset import png
from dataset.ingest import _decode_batch


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def encode_gray(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG written with the given filter type on each row (an independent encoder)."""
    height, width = pixels.shape
    rows, prior = [], [0] * width
    for y in range(height):
        line, kind, out = [int(v) for v in pixels[y]], filters[y], []
        for x in range(width):
            a = line[x - 1] if x else 0
            b, c = prior[x], prior[x - 1] if x else 0
            predicted = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out.append((line[x] - predicted) % 256)
        rows.append(bytes([kind] + out))
        prior = line
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (png.SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def test_every_filter_type_decodes_as_pillow_does():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(12)]
    encoded = [encode_gray(img, list(rng.integers(0, 5, 28))) for img in images]
    scanlines = np.stack([np.frombuffer(png.inflate_gray8(d)[2], np.uint8).reshape(28, 29)
                          for d in encoded])
    decoded = png.unfilter(scanlines)
    for img, data, fast in zip(images, encoded, decoded, strict=True):
        assert np.array_equal(fast, img) and np.array_equal(_pillow(data), img)


def test_pillow_written_pngs_take_the_fast_path():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(img, "L").save(buffer, "PNG", optimize=True)
    width, height, raw = png.inflate_gray8(buffer.getvalue())
    assert (width, height) == (28, 28)
    pixels = png.unfilter(np.frombuffer(raw, np.uint8).reshape(1, 28, 29))
    assert np.array_equal(pixels[0], img)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16", "P"])
def test_other_kinds_of_png_are_left_to_pillow(mode):
    buffer = io.BytesIO()
    Image.new(mode, (28, 28)).save(buffer, "PNG")
    assert png.inflate_gray8(buffer.getvalue()) is None


def test_damage_is_refused():
    data = encode_gray(np.zeros((28, 28), np.uint8), [0] * 28)
    assert png.inflate_gray8(data[:-20]) is None  # truncated
    flipped = bytearray(data)
    flipped[45] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert png.inflate_gray8(bytes(flipped)) is None
    bad_filter = np.zeros((1, 28, 29), np.uint8)
    bad_filter[0, 3, 0] = 7
    assert png.unfilter(bad_filter) is None


def test_a_mixed_batch_keeps_order_and_matches_pillow(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for i, (fmt, mode) in enumerate([("PNG", "L"), ("PNG", "RGB"), ("JPEG", "L"), ("PNG", "L"),
                                     ("PNG", "LA")]):
        img = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").convert(mode)
        path = tmp_path / f"{i}.{fmt.lower()}"
        img.save(path, fmt)
        files.append((path.name, i % 10))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (30, 28)).save(tmp_path / "wide.png")
    problems = []
    images, labels = _decode_batch(tmp_path, files + [("bad.png", 1), ("wide.png", 2)], problems)
    assert [int(x) for x in labels] == [0, 1, 2, 3, 4]
    for (name, _), image in zip(files, images, strict=True):
        assert np.array_equal(image, _pillow((tmp_path / name).read_bytes())), name
    assert len(problems) == 2
    assert problems[0].startswith("bad.png: not a decodable PNG/JPEG image")
    assert problems[1] == "wide.png: image is 30x28, expected 28x28"
