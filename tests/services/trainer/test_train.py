import io

import numpy as np
import pytest
from PIL import Image

from core.settings import MODEL_TYPES
from services.trainer import models
from services.trainer.train import TrainConfig, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cnn_has_about_93k_parameters():
    assert models.build("cnn").count_params() == 93_322


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_each_variant_trains_and_exports_a_serving_model(model_type, ingested, tmp_path):
    import tensorflow as tf

    progress = []
    result = train(TrainConfig(model_type, ingested, tmp_path / "model", steps_per_epoch=8,
                               batch_size=32), progress.append)
    assert result.steps == 8 and 0.0 <= result.val_accuracy <= 1.0
    assert progress[-1]["step"] == 8 and progress[-1]["planned"] == 8
    # where the seconds went, adding up to the training's own
    assert {"setup", "first_step", "steps", "validation", "checkpoint", "tensorboard", "export",
            "finish"} <= set(result.phases)
    assert abs(sum(result.phases.values()) - result.seconds) < 0.01
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


def test_the_cnn_learns_the_stand_in(trained_models):
    """(The session's good model: three passes over the ``ingested`` dataset, trained by the
    real trainer once for every test that needs a model.)"""
    assert trained_models.good.val_accuracy > 0.5  # chance is 0.1


def test_a_corrupt_shard_fails_training_with_its_name(tmp_path):
    import subprocess
    import sys

    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from dataset.store import shard_paths
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "data", train=600, test=100)
    uri = ingest(root, tmp_path / "store", fingerprint(root), dataset_key="k",
                 shard_size=200).dataset_uri
    shard = shard_paths(uri, "train")[1]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    done = subprocess.run([sys.executable, "-m", "retrain.cli", "train", "--model", "cnn",
                           "--dataset", uri, "--out", str(tmp_path / "m"), "--batch-size", "32"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "shard-00001.tfrecord has a different size than recorded" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


def test_a_training_stopped_after_its_checkpoint_at_the_last_step_resumes_and_validates(
        ingested, tmp_path):
    """Checkpointed at its last step, then stopped before the fit returned (here the progress
    report of that step raises, as a kill would leave it): started again, nothing is left to
    train, and the validation the fit skips is still measured."""

    class Stopped(Exception):
        pass

    def stop_at_the_end(point):
        if point["step"] == 6:
            raise Stopped

    config = TrainConfig("cnn", ingested, tmp_path / "run" / "model", steps_per_epoch=6,
                         batch_size=32, checkpoint_every=6)
    with pytest.raises(Stopped):
        train(config, stop_at_the_end)
    assert (tmp_path / "run" / "backup").is_dir()  # the checkpoint of step 6 is there
    result = train(config)
    assert result.resumed_from_step == 6 and result.steps == 6
    assert 0.0 <= result.val_accuracy <= 1.0 and np.isfinite(result.val_loss)
