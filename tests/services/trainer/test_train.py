import io

import numpy as np
import pytest
from PIL import Image

from services.trainer import models
from services.trainer.train import TrainConfig, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cnn_has_about_93k_parameters():
    assert models.build("cnn").count_params() == 93_322


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_each_variant_trains_and_exports_a_serving_model(model_type, ingested, tmp_path):
    import tensorflow as tf

    progress = []
    result = train(TrainConfig(model_type, ingested, tmp_path / "model", steps_per_epoch=8,
                               batch_size=32), progress.append)
    assert result.steps == 8 and 0.0 <= result.val_accuracy <= 1.0
    assert progress[-1]["step"] == 8 and progress[-1]["planned"] == 8
    loaded = tf.saved_model.load(result.model_uri)
    png = io.BytesIO()
    Image.fromarray(np.full((28, 28), 200, np.uint8), "L").save(png, format="PNG")
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8), "RGB").save(rgb, format="JPEG")
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([png.getvalue(), rgb.getvalue()]))
    probs = out["probabilities"].numpy()
    assert probs.shape == (2, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    arrays = loaded.signatures["predict_images"](images=tf.zeros((3, 28, 28)))["probabilities"]
    assert arrays.shape == (3, 10)


def test_the_cnn_learns_the_stand_in(ingested, tmp_path):
    result = train(TrainConfig("cnn", ingested, tmp_path / "m", epochs=3, batch_size=32))
    assert result.val_accuracy > 0.5  # chance is 0.1
