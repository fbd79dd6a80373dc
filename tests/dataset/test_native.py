"""The C decoder of the plainest 28x28 grayscale PNGs (dataset._native): it decodes what it
takes to the pixels libspng and Pillow give, and leaves everything else to them."""

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dataset import native, png
from dataset.ingest import _decode_batch, _pillow_decode
from tests.dataset.pngs import chunk as _chunk
from tests.dataset.pngs import filtered_rows

EXAMPLES = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
IEND = struct.pack(">I4sI", 0, b"IEND", zlib.crc32(b"IEND"))


def _png(parts: list[bytes], middle: bytes = b"", end: bytes = IEND) -> bytes:
    """The 33-byte head, an IDAT chunk per part of the stream, ``middle`` chunks, IEND."""
    return png._HEAD + b"".join(_chunk(b"IDAT", p) for p in parts) + middle + end


def _encode(pixels: np.ndarray, filters: list[int], level: int = 6) -> bytes:
    return _png([zlib.compress(filtered_rows(pixels, filters), level)])


def _pillow_png(img: np.ndarray, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(img, "L").convert(mode).save(buffer, "PNG", **options)
    return buffer.getvalue()


def _stream(data: bytes) -> bytes:
    parts, at = [], 33
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        parts += [data[at + 8:at + 8 + length]] if kind == b"IDAT" else []
        at += 12 + length
    return b"".join(parts)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:28, 0:28]
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8),
            ((x * 9 + y * 3) % 256).astype(np.uint8),
            (x * 9).astype(np.uint8), (y * 9).astype(np.uint8),
            (128 + 100 * np.sin(x / 4) * np.cos(y / 5)).astype(np.uint8),
            (x * 8 + rng.integers(0, 4, (28, 28))).astype(np.uint8), np.zeros((28, 28), np.uint8),
            np.full((28, 28), 255, np.uint8), ((x ^ y) * 7 % 256).astype(np.uint8)]


IMAGES = _images()
PLAIN = _encode(IMAGES[0], [0, 1, 2, 3, 4] * 5 + [4, 3, 1])
RGB = np.random.default_rng(8).integers(0, 256, (28, 28, 3), dtype=np.uint8)


def _native(data: bytes) -> np.ndarray | None:
    pixels, decoded = native.decode_png28([data])
    return pixels[0] if decoded[0] else None


def _batch(datas: list[bytes], native_on: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``_decode_batch`` on these images, with the C decoder, or with it forced off."""
    items = [(f"{i}.png", i % 10) for i in range(len(datas))]
    contents = {name: data for (name, _), data in zip(items, datas)}
    problems: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        if not native_on:
            mp.setattr(native, "_native", None)
        images, labels = _decode_batch(Path("/nowhere"), items, problems, contents, {})
    return images, labels, problems


def _same_with_native_off(datas: list[bytes]) -> None:
    on, off = _batch(datas, True), _batch(datas, False)
    assert np.array_equal(on[0], off[0]) and np.array_equal(on[1], off[1])
    assert [_unplaced(p) for p in on[2]] == [_unplaced(p) for p in off[2]]


def _unplaced(problem: str) -> str:  # Pillow names the BytesIO by its address
    return re.sub(r" at 0x[0-9a-f]+", "", problem)


def _decodes_as_libspng_and_pillow_do(data: bytes, expected: np.ndarray | None = None) -> None:
    fast = _native(data)
    assert fast is not None, "the C decoder refused a plain 28x28 grayscale PNG"
    reference, problem = _pillow_decode("x.png", data)
    assert problem is None and np.array_equal(fast, reference)
    assert np.array_equal(fast, png.decode_gray28(data))
    assert expected is None or np.array_equal(fast, expected)


def test_the_extension_is_built():
    assert native.available() and native._native is not None, (
        "dataset._native, the C extension, was not built: a C compiler and the zlib headers "
        "are needed when the package is installed (setup.py build_ext)")


def test_pillow_written_pngs_decode_as_libspng_and_pillow_do():
    seen: set[int] = set()
    for img in IMAGES:
        for options in ({}, {"optimize": True}, {"compress_level": 0}, {"compress_level": 1},
                        {"compress_level": 9}):
            data = _pillow_png(img, **options)
            _decodes_as_libspng_and_pillow_do(data, img)
            seen |= set(zlib.decompress(_stream(data))[::29])
    assert seen == {0, 1, 2, 3, 4}  # Pillow's adaptive filters used every filter type


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4, "mixed"])
def test_each_filter_type_of_a_hand_rolled_encoder_decodes_as_pillow_does(kind):
    rng = np.random.default_rng(9)
    for img in IMAGES:
        filters = list(rng.integers(0, 5, 28)) if kind == "mixed" else [kind] * 28
        for level in (0, 1, 9):
            _decodes_as_libspng_and_pillow_do(_encode(img, filters, level), img)


def test_the_stream_split_over_idat_chunks_decodes_wherever_it_is_cut():
    img = IMAGES[4]
    stream = zlib.compress(filtered_rows(img, [4, 3, 2, 1, 0] * 5 + [3, 3, 3]), 9)
    for cut in range(len(stream)):  # from an empty first IDAT to a last one of 1 byte
        _decodes_as_libspng_and_pillow_do(_png([stream[:cut], stream[cut:]]), img)
    _decodes_as_libspng_and_pillow_do(_png([stream[i:i + 1] for i in range(len(stream))]), img)
    _decodes_as_libspng_and_pillow_do(_png([b"", stream[:50], b"", stream[50:]]), img)
    stored = zlib.compress(filtered_rows(img, [1] * 28), 0)  # a stored stream: the rows as they are
    _decodes_as_libspng_and_pillow_do(_png([stored[:7], b"", stored[7:400], stored[400:]]), img)


def test_an_empty_idat_after_the_stream_decodes_as_pillow_does_or_is_left_to_it():
    """libspng and Pillow take it; the C decoder may leave it to them (it does today)."""
    data = _png([zlib.compress(filtered_rows(IMAGES[4], [1] * 28)), b""])
    fast = _native(data)
    assert fast is None or np.array_equal(fast, IMAGES[4])
    assert np.array_equal(png.decode_gray28(data), IMAGES[4])
    _same_with_native_off([data])


def _refusals() -> dict[str, bytes]:
    img, rows = IMAGES[1], filtered_rows(IMAGES[1], [2] * 28)
    stream = zlib.compress(rows)
    bad_adler = stream[:-4] + bytes(b ^ 0x5A for b in stream[-4:])
    dictionary = zlib.compressobj(zdict=rows[:64])
    raw, gzip = zlib.compressobj(wbits=-15), zlib.compressobj(wbits=31)
    interlaced = bytearray(png._HEAD)
    interlaced[28] = 1
    interlaced[29:33] = struct.pack(">I", zlib.crc32(bytes(interlaced[12:29])))
    jpeg = io.BytesIO()
    Image.fromarray(img, "L").save(jpeg, "JPEG")
    text = _chunk(b"tEXt", b"a\x00b")
    return {
        "wrong IHDR CRC": PLAIN[:32] + bytes([PLAIN[32] ^ 1]) + PLAIN[33:],
        "wrong IDAT CRC": PLAIN[:-13] + bytes([PLAIN[-13] ^ 1]) + PLAIN[-12:],
        "tEXt before IDAT": png._HEAD + _chunk(b"tEXt", b"a\x00b") + PLAIN[33:],
        "gAMA after IDAT": _png([stream], _chunk(b"gAMA", struct.pack(">I", 45455))),
        "IDAT after tEXt": _png([stream[:30]], text + _chunk(b"IDAT", stream[30:])),
        "a second IHDR": png._HEAD + PLAIN[8:33] + PLAIN[33:],
        "an empty second IHDR": png._HEAD + _chunk(b"IHDR", b"") + PLAIN[33:],  # Pillow refuses
        "an empty tEXt before IDAT": png._HEAD + _chunk(b"tEXt", b"") + PLAIN[33:],
        "an empty PLTE before IDAT": png._HEAD + _chunk(b"PLTE", b"") + PLAIN[33:],
        "an empty chunk between IDATs":
            _png([stream[:30]], _chunk(b"prIv", b"") + _chunk(b"IDAT", stream[30:])),
        "an empty chunk after IDAT": _png([stream], _chunk(b"prIv", b"")),
        "no IDAT": png._HEAD + IEND,
        "no IEND": _png([stream], end=b""),
        "IEND cut short": PLAIN[:-1],
        "a byte after IEND": PLAIN + b"\x00",
        "a second IEND": PLAIN + IEND,
        "IEND with a body": _png([stream], end=_chunk(b"IEND", b"\x00")),
        "wrong Adler-32": _png([bad_adler]),
        "wrong Adler-32, split": _png([bad_adler[:20], bad_adler[20:]]),
        "811 bytes": _png([zlib.compress(rows[:-1])]),
        "813 bytes": _png([zlib.compress(rows + b"\x00")]),
        "no rows": _png([zlib.compress(b"")]),
        "28 rows twice": _png([zlib.compress(rows * 2)]),
        "a byte after the stream": _png([stream + b"\x00"]),
        "a second stream": _png([stream + zlib.compress(b"")]),
        "a byte after the stream in an IDAT of its own": _png([stream, b"\x00"]),
        "a stream cut short": _png([stream[:-1]]),
        "filter type 5": _png([zlib.compress(rows[:29 * 5] + b"\x05" + rows[29 * 5 + 1:])]),
        "filter type 255": _png([zlib.compress(rows[:-29] + b"\xff" + rows[-28:])]),
        "a preset dictionary": _png([dictionary.compress(rows) + dictionary.flush()]),
        "raw deflate": _png([raw.compress(rows) + raw.flush()]),
        "gzip": _png([gzip.compress(rows) + gzip.flush()]),
        "16-bit": _pillow_png(img, "I;16"),
        "RGB": _pillow_png(img, "RGB"),
        "RGB pixels": _rgb_png(),
        "palette": _pillow_png(img, "P"),
        "gray with alpha": _pillow_png(img, "LA"),
        "1-bit": _pillow_png(img, "1"),
        "interlaced": bytes(interlaced) + PLAIN[33:],
        "27x28": _pillow_png(img[:, :27]),
        "28x27": _pillow_png(img[:27]),
        "JPEG": jpeg.getvalue(),
        "empty": b"",
        "the signature only": png.SIGNATURE,
        "the head only": png._HEAD,
    }


def _fixed_huffman(length_symbol: int) -> bytes:
    """A zlib stream of 812 zero bytes in one fixed-Huffman block: a literal 0, three copies
    at distance 1 of the length ``length_symbol`` stands for (285: 258; 286 and 287 are in
    no valid stream, though some inflaters read them as 258), one copy of 37; Adler-32 right."""
    bits: list[int] = [1, 1, 0]  # the last block; fixed codes (2 bits, least significant first)

    def code(value: int, width: int) -> None:  # a Huffman code: most significant bit first
        bits.extend((value >> k) & 1 for k in reversed(range(width)))

    def symbol(value: int) -> None:
        code(*((0x30 + value, 8) if value < 144 else (value - 256, 7) if value < 280
               else (0xC0 + value - 280, 8)))

    symbol(0)
    for _ in range(3):
        symbol(length_symbol)
        code(0, 5)  # distance 1
    symbol(273)  # 35 + 2 extra bits
    bits.extend([0, 1, 0])
    code(0, 5)
    symbol(256)  # the block's end
    bits.extend([0] * (-len(bits) % 8))
    body = bytes(sum(b << k for k, b in enumerate(bits[at:at + 8])) for at in range(0, len(bits), 8))
    return b"\x78\x01" + body + struct.pack(">I", zlib.adler32(bytes(812)))


def test_a_fixed_huffman_stream_is_taken_and_an_invalid_length_symbol_is_refused():
    assert zlib.decompress(_fixed_huffman(285)) == bytes(812)
    assert np.array_equal(_native(_png([_fixed_huffman(285)])), np.zeros((28, 28), np.uint8))
    for invalid in (286, 287):  # zlib, libspng and Pillow refuse these streams
        data = _png([_fixed_huffman(invalid)])
        assert _native(data) is None and png.decode_gray28(data) is None
        _same_with_native_off([PLAIN, data])


def _rgb_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RGB, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


REFUSALS = _refusals()


@pytest.mark.parametrize("name", list(REFUSALS))
def test_anything_but_the_plainest_png_is_left_to_the_other_decoders(name):
    data = REFUSALS[name]
    assert _native(data) is None
    _same_with_native_off([PLAIN, data, PLAIN])


def test_every_cut_and_every_damaged_byte_is_refused():
    stream = zlib.compress(filtered_rows(IMAGES[5], [3] * 28))
    for base in (PLAIN, _pillow_png(IMAGES[3], optimize=True),
                 _png([stream[:40], b"", stream[40:]])):
        assert _native(base) is not None
        _, decoded = native.decode_png28([base[:n] for n in range(len(base))])
        assert not decoded.any()
        for xor in (0x01, 0x80, 0xFF):
            damaged = [base[:at] + bytes([base[at] ^ xor]) + base[at + 1:]
                       for at in range(len(base))]
            _, decoded = native.decode_png28(damaged)  # every byte is under a CRC or the head
            assert not decoded.any(), [at for at in np.flatnonzero(decoded)]


def test_a_damaged_stream_under_right_crcs_decodes_only_as_pillow_does():
    stream = zlib.compress(filtered_rows(IMAGES[0], [1, 4] * 14), 9)
    decoded_some = 0
    for at in range(len(stream)):
        for xor in (0x01, 0x10, 0x80, 0xFF):
            damaged = stream[:at] + bytes([stream[at] ^ xor]) + stream[at + 1:]
            data = _png([damaged[:60], damaged[60:]])
            fast = _native(data)
            if fast is not None:
                decoded_some += 1
                reference, problem = _pillow_decode("x.png", data)
                assert problem is None and np.array_equal(fast, reference), (at, xor)
    assert decoded_some < len(stream)  # the Adler-32 catches (almost) every change


EDITS = st.sampled_from(["set", "cut", "insert", "delete", "filter"])
MUTATIONS = st.lists(st.tuples(EDITS, st.integers(0, 1 << 16), st.integers(0, 255)),
                     min_size=1, max_size=4)


def _mutated(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, at, value in edits:
        at %= len(out) + 1
        if op == "set" and at < len(out):
            out[at] = value
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = bytes([value])
        elif op == "delete":
            del out[at:at + 1]
        elif op == "filter" and len(out) >= 812:  # a row's filter byte, to one of 0-5
            out[(at % 28) * 29] = value % 6
    return bytes(out)


BASES = [PLAIN, _pillow_png(IMAGES[4]), _encode(IMAGES[8], [3] * 28, 0)]


@EXAMPLES
@given(base=st.sampled_from(BASES), layer=st.sampled_from(["file", "stream", "rows"]),
       edits=MUTATIONS, cut=st.integers(0, 400))
def test_a_mutated_png_decodes_as_pillow_does_or_not_at_all(base, layer, edits, cut):
    if layer == "file":
        data = _mutated(base, edits)
    elif layer == "stream":  # the zlib stream changed, every chunk's CRC right
        stream = _mutated(_stream(base), edits)
        data = _png([stream[:cut], stream[cut:]])
    else:  # the filtered rows changed, and compressed again
        data = _png([zlib.compress(_mutated(zlib.decompress(_stream(base)), edits))])
    fast = _native(data)
    if fast is not None:
        reference, problem = _pillow_decode("x.png", data)
        assert problem is None and np.array_equal(fast, reference)
        assert np.array_equal(fast, png.decode_gray28(data))
    _same_with_native_off([data, base])


def test_a_large_batch_lines_up_with_each_item_decoded_alone():
    rng = np.random.default_rng(11)
    pool = [(_pillow_png(img), img) for img in IMAGES] + [(d, None) for d in REFUSALS.values()]
    pool += [(_encode(img, list(rng.integers(0, 5, 28))), img) for img in IMAGES]
    picks = rng.integers(0, len(pool), 1000)
    datas = [pool[i][0] for i in picks]
    for threads in (0, 1, 2, 3, 4, 8, 100):
        out = np.empty((len(datas), 28, 28), np.uint8)
        decoded = np.frombuffer(native._native.decode_png28(datas, out, threads), np.bool_)
        assert list(decoded) == [pool[i][1] is not None for i in picks], threads
        for row, i in enumerate(picks):
            assert pool[i][1] is None or np.array_equal(out[row], pool[i][1]), (threads, row)
    for n in (63, 64, 65, 130):
        pixels, decoded = native.decode_png28(datas[:n])
        assert list(decoded) == [pool[i][1] is not None for i in picks[:n]]
        assert all(np.array_equal(pixels[r], pool[i][1])
                   for r, i in enumerate(picks[:n]) if decoded[r])
    _same_with_native_off(datas[:200])


def test_an_empty_batch_decodes_nothing():
    pixels, decoded = native.decode_png28([])
    assert pixels.shape == (0, 28, 28) and decoded.shape == (0,)
    assert native._native.decode_png28([], np.empty((0, 28, 28), np.uint8), 4) == b""


@pytest.mark.parametrize("item", [bytearray(PLAIN), memoryview(PLAIN), PLAIN.decode("latin-1"),
                                  None])
def test_an_item_that_is_not_bytes_is_a_type_error(item):
    with pytest.raises(TypeError):
        native.decode_png28([PLAIN] * 70 + [item])


def test_without_the_extension_nothing_is_decoded_here(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    pixels, decoded = native.decode_png28([PLAIN, b""])
    assert pixels.shape == (2, 28, 28) and not decoded.any()
