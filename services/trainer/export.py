"""Export in TF Serving's layout with two signatures.

``serving_default`` takes ``image_bytes`` (encoded PNG/JPEG; TF Serving's REST API turns
``{"b64": ...}`` into those bytes), decodes, converts to grayscale and resizes to 28x28 in
the graph. ``predict_images`` takes float arrays shaped (n, 28, 28) in [0, 1] or 0-255.
Both return ``probabilities`` (n, 10).
"""

from __future__ import annotations

import json
from pathlib import Path

from services.trainer.tf_env import configure

configure()

import tensorflow as tf  # noqa: E402


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    image = tf.cond(
        tf.shape(image)[-1] == 1,
        lambda: image,
        lambda: tf.image.rgb_to_grayscale(image[..., :3]),
    )
    image = tf.image.resize(tf.cast(image, tf.float32), (28, 28))
    return tf.ensure_shape(image / 255.0, (28, 28, 1))


class ServingModule(tf.Module):
    def __init__(self, model: tf.keras.Model) -> None:  # type: ignore[name-defined]
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(_decode, image_bytes, fn_output_signature=tf.float32)
        return {"probabilities": self.model(images, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve_arrays(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        scaled = tf.where(tf.reduce_max(images) > 1.0, images / 255.0, images)
        return {"probabilities": self.model(scaled[..., tf.newaxis], training=False)}


INFO_FILE = "assets.extra/retrain.json"  # what it is (TF Serving ignores assets.extra)
WEIGHTS_FILE = "assets.extra/weights.h5"  # Keras weights, for warm starts


def export(model: tf.keras.Model, path: Path,  # type: ignore[name-defined]
           info: dict[str, object] | None = None) -> Path:
    """Write a SavedModel at ``path`` (a version folder such as ``.../fashion-mnist/3``), with
    ``info`` and the Keras weights under ``assets.extra/``."""
    module = ServingModule(model)
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve_bytes.get_concrete_function(),
            "predict_images": module.serve_arrays.get_concrete_function(),
        },
    )
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / INFO_FILE).write_text(json.dumps(info or {}, indent=1, default=str))
    model.save_weights(str(path / WEIGHTS_FILE))
    return path
