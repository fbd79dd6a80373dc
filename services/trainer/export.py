"""Export in TF Serving's layout with two signatures.

``serving_default`` takes ``image_bytes`` (encoded PNG/JPEG; TF Serving's REST API turns
``{"b64": ...}`` into those bytes), decodes, converts to grayscale and resizes to 28x28 in
the graph. ``predict_images`` takes float arrays shaped (n, 28, 28) in [0, 1] or 0-255.
Both return ``probabilities`` (n, 10).
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from dataset.image_header import FORMATS, MAX_PIXELS, MAX_SIDE
from repository.layout import ARRAYS_SIGNATURE, BYTES_SIGNATURE, INFO_FILE, OUTPUT, WEIGHTS_FILE


def _number(head: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    part = head[start:start + size]
    weights = tf.constant([256 ** (size - 1 - i if big_endian else i) for i in range(size)],
                          tf.int64)
    return tf.reduce_sum(part * weights)


def _declared_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """[width, height] from the header (what ``dataset.image_header`` reads), [-1, -1] for a
    format ``decode_image`` should not be handed."""
    padded = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, 32),
                                                "\0" * 32]), 0, 32)
    head = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)
    magic = tf.strings.substr(image_bytes, 0, 8)

    def signed(value: tf.Tensor) -> tf.Tensor:  # BMP sizes are signed (height < 0: top-down)
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return tf.stack([shape[1], shape[0]])

    return tf.case([
        (tf.equal(magic, b"\x89PNG\r\n\x1a\n"),
         lambda: tf.stack([_number(head, 16, 4, True), _number(head, 20, 4, True)])),
        (tf.logical_or(tf.equal(tf.strings.substr(magic, 0, 6), b"GIF87a"),
                       tf.equal(tf.strings.substr(magic, 0, 6), b"GIF89a")),
         lambda: tf.stack([_number(head, 6, 2, False), _number(head, 8, 2, False)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"),
         lambda: tf.stack([signed(_number(head, 18, 4, False)),
                           signed(_number(head, 22, 4, False))])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg),
    ], default=lambda: tf.constant([-1, -1], tf.int64))


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    size = _declared_size(image_bytes)
    pixels = size[0] * size[1]
    checks = [
        tf.debugging.assert_positive(size, message=f"not a {FORMATS} image, or an empty one"),
        tf.debugging.assert_less_equal(
            tf.maximum(pixels, tf.reduce_max(size) * (MAX_PIXELS // MAX_SIDE)),
            tf.constant(MAX_PIXELS, tf.int64),
            message=f"the image declares more than {MAX_PIXELS:,} pixels or {MAX_SIDE} per side"),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] == 1,
        lambda: image,
        lambda: tf.image.rgb_to_grayscale(image[..., :3]),
    )
    image = tf.image.resize(tf.cast(image, tf.float32), (28, 28))
    return tf.ensure_shape(image / 255.0, (28, 28, 1))


class ServingModule(tf.Module):
    """The two signatures over ``model``'s variables. The Keras model itself is not saved (a
    Keras object in a SavedModel brings every layer's traced functions: twice the export's
    time and the loading's, for nothing a signature uses); its weights are saved beside."""

    def __init__(self, model: tf.keras.Model) -> None:  # type: ignore[name-defined]
        super().__init__()
        self.model_variables = list(model.variables)  # what the signatures read, tracked
        self._predict = model.__call__  # not tracked: no Keras object in the SavedModel

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(_decode, image_bytes, fn_output_signature=tf.float32)
        return {OUTPUT: self._predict(images, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve_arrays(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        scaled = tf.where(tf.reduce_max(images) > 1.0, images / 255.0, images)
        return {OUTPUT: self._predict(scaled[..., tf.newaxis], training=False)}


def export(model: tf.keras.Model, path: Path,  # type: ignore[name-defined]
           info: dict[str, object] | None = None) -> Path:
    """Write a SavedModel at ``path`` (a version folder such as ``.../fashion-mnist/3``), with
    ``info`` and the Keras weights under ``assets.extra/``."""
    module = ServingModule(model)
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            BYTES_SIGNATURE: module.serve_bytes.get_concrete_function(),
            ARRAYS_SIGNATURE: module.serve_arrays.get_concrete_function(),
        },
    )
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / INFO_FILE).write_text(json.dumps(info or {}, indent=1, default=str))
    model.save_weights(str(path / WEIGHTS_FILE))
    return path
