"""Plain 28x28 grayscale PNGs are decoded by the server (libspng) and given to the arrays
signature: the pixels must be exactly those the model's own decoding signature computes,
and the probabilities equal to float32 rounding (the two signatures' graphs may order a sum
differently). Anything else, and any PNG libspng cannot read, goes the model's own way."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from services.serving.decode import (
    UndecodableError,
    decode_plain_pngs,
    is_plain_png28,
)
from services.serving.errors import BadRequestError
from services.serving.model import import_tensorflow, load

tf = import_tensorflow()  # (the server imports it with its first version)

pytestmark = [pytest.mark.integration]


def _png(pixels, mode="L", **options):
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG", **options)
    return buf.getvalue()


def _jpeg(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="JPEG")
    return buf.getvalue()


def _with_chunk(png, kind, data):
    """``png`` with a chunk inserted right after IHDR."""
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return png[:33] + chunk + png[33:]


def _images(n, seed=0):
    """Random, constant and smooth images: PNG writers choose different row filters for each
    (Paeth, Sub, Up, Average and None all occur)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8) * 4
    kinds = [lambda: rng.integers(0, 256, (28, 28), dtype=np.uint8),
             lambda: np.full((28, 28), rng.integers(0, 256), np.uint8),
             lambda: (ramp + rng.integers(0, 8, (28, 28))).astype(np.uint8)]
    return [kinds[i % 3]() for i in range(n)]


@pytest.fixture(scope="module")
def model(saved_model):
    return load(saved_model, 1)


def _signature(model, encoded):
    """What the SavedModel's own serving_default answers."""
    return model.serve_bytes(image_bytes=tf.constant(encoded))["probabilities"].numpy()


def test_which_pngs_are_decoded_here():
    gray = _images(1)[0]
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "a Fashion-MNIST image")
    plain = _png(gray)
    assert is_plain_png28(plain)
    assert is_plain_png28(_png(gray, pnginfo=text))
    assert is_plain_png28(_png(gray, compress_level=0))
    assert is_plain_png28(_png(gray, dpi=(72, 72)))  # pHYs
    assert is_plain_png28(_with_chunk(plain, b"tIME", bytes(7)))
    # what decodes differently, or that serving_default may treat otherwise
    assert not is_plain_png28(_png(np.stack([gray] * 3, -1), "RGB"))
    assert not is_plain_png28(_png(gray, transparency=0))  # tRNS: gray + alpha
    assert not is_plain_png28(_with_chunk(plain, b"gAMA", struct.pack(">I", 45455)))
    assert not is_plain_png28(_with_chunk(plain, b"sBIT", b"\x04"))
    assert not is_plain_png28(_png(gray[:, :27]))
    assert not is_plain_png28(_png(np.zeros((56, 56), np.uint8)))
    assert not is_plain_png28(_png(gray.astype(np.uint16) * 257, "I;16"))
    assert not is_plain_png28(plain[:25] + b"\x01" + plain[26:])  # a palette image's header
    assert not is_plain_png28(plain[:28] + b"\x01" + plain[29:])  # interlaced
    assert not is_plain_png28(_jpeg(gray))
    assert not is_plain_png28(plain[:-12])  # no IEND: cut short
    assert not is_plain_png28(plain[:33] + b"\xff\xff\xff\xffIDAT")  # a length past the end
    assert not is_plain_png28(b"")


def test_the_pixels_are_what_serving_default_feeds_the_model():
    images = _images(30)
    pixels = decode_plain_pngs([_png(i, optimize=True) for i in images])
    assert pixels.dtype == np.float32 and pixels.shape == (30, 28, 28)
    np.testing.assert_array_equal(pixels, np.stack(images).astype(np.float32) / np.float32(255))


def test_plain_pngs_get_the_signatures_probabilities(model):
    images = _images(48, seed=1)
    encoded = [_png(image, compress_level=level % 10) for level, image in enumerate(images)]
    assert all(is_plain_png28(e) for e in encoded)
    for batch in (encoded[:1], encoded[:5], encoded):
        fast, signature = model.predict_bytes(batch), _signature(model, batch)
        np.testing.assert_allclose(fast, signature, rtol=1e-5, atol=1e-7)
        assert np.argmax(fast, 1).tolist() == np.argmax(signature, 1).tolist()


def test_a_mixed_batch_keeps_each_image_in_its_place(model):
    images = _images(8, seed=2)
    encoded = [_png(images[0]), _png(np.stack([images[1]] * 3, -1), "RGB"), _png(images[2]),
               _jpeg(images[3]), _png(images[4], transparency=0), _png(images[5]),
               _png(np.kron(images[6], np.ones((2, 2), np.uint8))), _png(images[7])]
    mixed = model.predict_bytes(encoded)
    one_by_one = np.concatenate([_signature(model, [e]) for e in encoded])
    np.testing.assert_allclose(mixed, one_by_one, rtol=1e-5, atol=1e-7)
    assert np.argmax(mixed, 1).tolist() == np.argmax(one_by_one, 1).tolist()


def test_a_damaged_plain_png_is_refused_by_the_models_own_decoder(model):
    good = _png(_images(1)[0])
    at = good.index(b"IDAT")
    damaged = good[:at + 10] + bytes([good[at + 10] ^ 0xFF]) + good[at + 11:]  # the CRC fails
    assert is_plain_png28(damaged)
    with pytest.raises(UndecodableError):
        decode_plain_pngs([good, damaged])
    with pytest.raises(BadRequestError, match="cannot decode image bytes"):
        model.predict_bytes([good, damaged])
    np.testing.assert_allclose(model.predict_bytes([good]), _signature(model, [good]),
                               rtol=1e-5, atol=1e-7)
