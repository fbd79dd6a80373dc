"""The 28x28 grayscale PNG fast path (libspng) agrees with Pillow, the reference decoder, and
hands everything else to Pillow."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset import png
from dataset.example import records
from dataset.ingest import _pillow_decode
from tests.dataset.pngs import chunk as _chunk
from tests.dataset.pngs import decode_from_disk, filtered_rows


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def encode_gray(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG written with the given filter type on each row (an independent encoder)."""
    height, width = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (png.SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(filtered_rows(pixels, filters)))
            + _chunk(b"IEND", b""))


def test_every_filter_type_decodes_as_pillow_does():
    rng = np.random.default_rng(0)
    for _ in range(12):
        img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        data = encode_gray(img, list(rng.integers(0, 5, 28)))
        fast = png.decode_gray28(data)
        assert fast is not None and np.array_equal(fast, img) and np.array_equal(_pillow(data), img)


def test_pillow_written_pngs_take_the_fast_path():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(img, "L").save(buffer, "PNG", optimize=True)
    assert np.array_equal(png.decode_gray28(buffer.getvalue()), img)


def _with_chunk(data: bytes, chunk: bytes) -> bytes:
    at = len(png.HEADER) + 4  # after IHDR's CRC
    return data[:at] + chunk + data[at:]


@pytest.mark.parametrize("kind, body", [(b"gAMA", struct.pack(">I", 100_000)), (b"sBIT", b"\x04"),
                                        (b"tRNS", b"\x00\x05"), (b"bKGD", b"\x00\x05"),
                                        (b"tEXt", b"Software\x00x")])
def test_ancillary_chunks_change_no_pixel_on_either_path(kind, body):
    img = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    data = _with_chunk(encode_gray(img, [4] * 28), _chunk(kind, body))
    fast = png.decode_gray28(data)
    assert fast is not None and np.array_equal(fast, _pillow(data)) and np.array_equal(fast, img)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "I;16", "P", "1"])
def test_other_kinds_of_png_are_left_to_pillow(mode):
    buffer = io.BytesIO()
    Image.new(mode, (28, 28)).save(buffer, "PNG")
    assert png.decode_gray28(buffer.getvalue()) is None


def test_other_sizes_and_interlaced_pngs_are_left_to_pillow():
    wide = io.BytesIO()
    Image.new("L", (30, 28)).save(wide, "PNG")
    img = encode_gray(np.zeros((28, 28), np.uint8), [0] * 28)
    header = bytearray(img[:33])
    header[28] = 1  # interlace method: Adam7
    header[29:33] = struct.pack(">I", zlib.crc32(bytes(header[12:29])))
    assert png.decode_gray28(wide.getvalue()) is None
    assert png.decode_gray28(bytes(header) + img[33:]) is None


def test_damage_is_left_to_pillow():
    data = encode_gray(np.zeros((28, 28), np.uint8), [0] * 28)
    assert png.decode_gray28(data) is not None
    assert png.decode_gray28(data[:-20]) is None  # truncated
    flipped = bytearray(data)
    flipped[45] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert png.decode_gray28(bytes(flipped)) is None
    text = _chunk(b"tEXt", b"a\x00b")
    bad_text = text[:-1] + bytes([text[-1] ^ 0xFF])  # libspng would drop it; Pillow refuses
    assert png.decode_gray28(_with_chunk(data, bad_text)) is None
    assert png.decode_gray28(_with_chunk(data, _chunk(b"PLTE", b"\x00" * 3))) is None
    rows = bytes([7] + [0] * 28) * 28  # filter type 7 does not exist
    idat = _chunk(b"IDAT", zlib.compress(rows))
    assert png.decode_gray28(data[:33] + idat + _chunk(b"IEND", b"")) is None


@pytest.mark.parametrize("split", [False, True], ids=["one IDAT", "two IDATs"])
def test_a_wrong_zlib_checksum_is_left_to_pillow_which_refuses_it(split):
    """Every chunk's CRC right, the image data's Adler-32 wrong: libspng would decode it,
    zlib (and so Pillow) refuses it, so the records refuse it too."""
    rows = bytes([0] + [9] * 28) * 28
    stream = bytearray(zlib.compress(rows))
    stream[-4:] = b"\x00\x00\x00\x00"
    parts = [bytes(stream[:40]), bytes(stream[40:])] if split else [bytes(stream)]
    data = png._HEAD + b"".join(_chunk(b"IDAT", p) for p in parts) + _chunk(b"IEND", b"")
    assert png.is_plain_gray28(data)  # well formed chunk by chunk
    assert png.decode_gray28(data) is None
    with pytest.raises(Exception):
        _pillow(data)


def test_any_damaged_byte_or_cut_is_refused_on_the_one_idat_shortcut():
    data = encode_gray(np.arange(784, dtype=np.uint8).reshape(28, 28) % 251, [1] * 28)
    assert png.is_plain_gray28(data)
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        assert not png.is_plain_gray28(bytes(damaged)), at
    assert not any(png.is_plain_gray28(data[:n]) for n in range(len(data)))


def test_an_image_data_split_over_chunks_takes_the_fast_path():
    img = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    data = encode_gray(img, [2] * 28)
    (length,) = struct.unpack_from(">I", data, 33)
    stream = data[41:41 + length]
    split = (data[:33] + _chunk(b"IDAT", stream[:100]) + _chunk(b"IDAT", stream[100:])
             + _chunk(b"IEND", b""))
    assert np.array_equal(png.decode_gray28(split), img)


def test_a_mixed_batch_gives_the_records_and_errors_of_the_reference_decoder(tmp_path):
    """Ingestion's decoding (libspng where it can, Pillow elsewhere) against Pillow alone on
    every file: the same records, and each refused file with the reference's own words."""
    rng = np.random.default_rng(2)
    kinds = [("PNG", "L"), ("PNG", "RGB"), ("JPEG", "L"), ("PNG", "L"), ("PNG", "LA"),
             ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("PNG", "1")]
    files = []
    for i, (fmt, mode) in enumerate(kinds):
        img = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").convert(mode)
        path = tmp_path / f"{i}.{fmt.lower()}"
        img.save(path, fmt)
        files.append((path.name, i % 10))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (30, 28)).save(tmp_path / "wide.png")
    plain = encode_gray(np.zeros((28, 28), np.uint8), [0] * 28)
    (tmp_path / "cut.png").write_bytes(plain[:-20])
    refused = [("bad.png", 1), ("wide.png", 2), ("cut.png", 3)]
    problems: list[str] = []
    images, labels = decode_from_disk(tmp_path, files + refused, problems)
    assert [int(x) for x in labels] == [label for _, label in files]
    reference = np.stack([_pillow((tmp_path / name).read_bytes()) for name, _ in files])
    assert bytes(b"".join(records(images, labels))) == bytes(b"".join(records(reference, labels)))
    expected = [_pillow_decode(name, (tmp_path / name).read_bytes())[1] for name, _ in refused]
    assert problems == expected
    assert problems[0].startswith("bad.png: not a decodable PNG/JPEG image")
    assert problems[1] == "wide.png: image is 30x28, expected 28x28"


def test_an_image_larger_than_one_read_is_read_whole(tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    big = _with_chunk(encode_gray(img, [1] * 28), _chunk(b"tEXt", b"Comment\x00" + b"x" * 200_000))
    (tmp_path / "big.png").write_bytes(big)
    problems: list[str] = []
    images, _ = decode_from_disk(tmp_path, [("big.png", 0)], problems)
    assert problems == [] and np.array_equal(images[0], img)
