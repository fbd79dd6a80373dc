"""Image sizes read from headers before decoding: the model server, ingestion and the
exported SavedModel's own decoder all refuse decompression bombs without decoding them."""

import io

import numpy as np
import pytest
from PIL import Image

from dataset.image_header import MAX_PIXELS, declared_size, size_problem
from tests.bombs import png_bomb


@pytest.fixture(scope="session")
def bomb():
    return png_bomb()


def _encoded(fmt, size=(37, 23), mode="L"):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "L"),
                                           ("JPEG", "RGB"), ("GIF", "L"), ("BMP", "RGB")])
def test_the_declared_size_is_read_from_each_format_tensorflow_decodes(fmt, mode):
    assert declared_size(_encoded(fmt, (37, 23), mode)) == (37, 23)
    assert size_problem(_encoded(fmt, (37, 23), mode)) is None


def test_a_bomb_is_refused_from_its_header(bomb):
    """How fast is measured by benchmarks/bench_reliability.py, not here."""
    assert len(bomb) < 500_000 and declared_size(bomb) == (20_000, 20_000)
    problem = size_problem(bomb)
    assert "declares 20000 x 20000 pixels" in problem and f"{MAX_PIXELS:,}" in problem


@pytest.mark.parametrize(("data", "fragment"), [
    (b"not an image", "not a PNG, JPEG, GIF or BMP image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a PNG"),  # cut short
    (b"\xff\xd8\xff\xda\x00\x08", "not a PNG"),  # JPEG data before any frame header
])
def test_unknown_or_cut_headers_are_refused(data, fragment):
    assert fragment in size_problem(data)


def test_ingestion_leaves_headers_it_cannot_read_to_pillow():
    assert size_problem(b"not an image", unknown_is_a_problem=False) is None
    assert "declares 20000 x 1" in size_problem(_encoded("PNG", (20_000, 1)),
                                                unknown_is_a_problem=False)


def test_a_wide_strip_is_refused_though_its_pixel_count_is_small():
    assert "per side" in size_problem(_encoded("PNG", (20_000, 1)))


@pytest.mark.integration
def test_the_exported_models_own_decoder_refuses_the_bomb(saved_model, bomb):
    """TF Serving users get the same limit: it is in the SavedModel's graph."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than"):
        serve(image_bytes=tf.constant([bomb]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a PNG, JPEG, GIF or BMP"):
        serve(image_bytes=tf.constant([b"GIF00a not an image"]))
    for fmt, mode in (("PNG", "L"), ("JPEG", "RGB"), ("GIF", "L"), ("BMP", "RGB")):
        out = serve(image_bytes=tf.constant([_encoded(fmt, (300, 200), mode)]))["probabilities"]
        assert out.shape == (1, 10) and np.isclose(float(tf.reduce_sum(out)), 1.0, atol=1e-4)


def test_a_jpeg_header_is_read_past_the_segments_before_its_frame():
    import struct

    from dataset.image_header import declared_size

    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 30, 40, 3) + bytes(9)
    assert declared_size(b"\xff\xd8" + app0 + frame) == (40, 30)
