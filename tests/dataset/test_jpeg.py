"""The JPEG fast path (libjpeg-turbo through simplejpeg) gives Pillow's pixels, and leaves
every image it does not take (colour, other sizes, damage) to Pillow."""

import io

import numpy as np
import pytest
from PIL import Image

from dataset import jpeg
from dataset.ingest import _pillow_decode
from dataset.seed import generate
from tests.dataset.pngs import decode_from_disk


def _jpeg(pixels: np.ndarray, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("options", [{"quality": 90}, {"quality": 30}, {"progressive": True},
                                     {"optimize": True}])
def test_grayscale_jpegs_decode_as_pillow_does(options):
    images, _ = generate(20, 11)
    for image in images:
        data = _jpeg(image, **options)
        fast = jpeg.decode_gray28(data)
        assert fast is not None and np.array_equal(fast, _pillow_decode("x.jpg", data)[0])


def test_colour_other_sizes_and_damage_are_left_to_pillow():
    images, _ = generate(3, 12)
    data = _jpeg(images[0])
    assert jpeg.decode_gray28(_jpeg(np.stack(list(images), -1), "RGB")) is None
    assert jpeg.decode_gray28(_jpeg(np.zeros((28, 30), np.uint8))) is None
    assert jpeg.decode_gray28(data[: len(data) // 2]) is None  # cut short
    assert jpeg.decode_gray28(b"\xff\xd8 not a jpeg") is None
    assert jpeg.decode_gray28(b"\x89PNG") is None


def test_a_batch_of_jpegs_gives_the_records_and_errors_of_the_reference_decoder(tmp_path):
    images, _ = generate(4, 13)
    files = {"a.jpg": _jpeg(images[0]), "b.jpg": _jpeg(images[1])[:200],
             "c.jpg": _jpeg(np.stack(list(images[1:]), -1), "RGB"), "d.jpg": _jpeg(images[3])}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    problems: list[str] = []
    got, labels = decode_from_disk(tmp_path, [(name, 1) for name in files], problems)
    expected = [_pillow_decode(name, data) for name, data in files.items()]
    assert np.array_equal(got, np.stack([p for p, e in expected if e is None]))
    assert problems == [e for _, e in expected if e is not None] and len(problems) == 1
    assert labels.tolist() == [1, 1, 1]
