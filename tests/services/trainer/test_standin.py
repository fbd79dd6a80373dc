"""The test trainer (``tests/standin_trainer.py``) is only honest if it leaves what
``retrain train`` leaves: the same files beside the same model layout, the same progress
records, the same event and the same printed summary. One real training and one stand-in
training with the same command line, compared field by field."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.sinks import read_stream
from services.trainer.progress import progress_key
from repository.layout import INFO_FILE
from tests.standin_trainer import WEAK_STEPS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _train(entry, ingested, out, run_id, env):
    done = subprocess.run(
        [*entry, "train", "--model", "dropout", "--dataset", ingested, "--out", str(out),
         "--run-id", run_id, "--steps-per-epoch", "12", "--batch-size", "32", "--sink", "stream",
         "--round-size", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_test_trainer_leaves_what_retrain_train_leaves(ingested, tmp_path, redis_handle, r,
                                                            standin_trainer):
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
           "RETRAIN_REDIS_URL": redis_handle.url}
    runs = tmp_path / "home" / "runs"  # where a model the selector is sent must lie
    real = _train((sys.executable, "-m", "retrain.cli"), ingested, runs / "real" / "model",
                  "real", env)
    stand = _train(standin_trainer, ingested, runs / "stand" / "model", "stand", env)
    assert set(real) == set(stand)  # the printed summary
    assert stand["model_uri"] == str(runs / "stand" / "model")

    assert _files(runs / "real" / "model") == _files(runs / "stand" / "model")
    # beside the model: result.json (and the real one's TensorBoard logs, which nothing reads)
    beside = {p.name for p in (runs / "real").iterdir()} - {"tensorboard"}
    assert beside == {p.name for p in (runs / "stand").iterdir()} == {"model", "result.json"}
    results = [json.loads((runs / kind / "result.json").read_text())
               for kind in ("real", "stand")]
    assert set(results[0]) == set(results[1])
    assert [results[1][k] for k in ("steps", "digest")] == [results[0][k] for k in ("steps", "digest")]
    infos = [json.loads((runs / kind / "model" / INFO_FILE).read_text())
             for kind in ("real", "stand")]
    assert set(infos[0]) <= set(infos[1]) and infos[1]["model_type"] == "dropout"
    assert infos[1]["dataset_digest"] == infos[0]["dataset_digest"]

    progress = [(r.hgetall(key), [json.loads(p) for p in r.lrange(key + ":history", 0, -1)])
                for key in (progress_key(run, "dropout") for run in ("real", "stand"))]
    (real_hash, real_points), (stand_hash, stand_points) = progress
    assert set(real_hash) == set(stand_hash) and stand_hash[b"state"] == b"done"
    assert [p["step"] for p in real_points] == [p["step"] for p in stand_points] == [10, 12]
    assert [set(p) for p in real_points] == [set(p) for p in stand_points]

    events = {e["data"]["run_id"]: e for e in read_stream(r)}  # the selector's stream
    assert set(events) == {"real", "stand"}
    assert events["stand"]["type"] == events["real"]["type"] == "dev.retrain.model.trained"
    assert (events["real"]["id"], events["stand"]["id"]) == ("real/dropout/trained",
                                                             "stand/dropout/trained")
    assert set(events["stand"]["data"]) == set(events["real"]["data"])
    for kind in ("real", "stand"):  # as a TFJob's trainer tells the selector its round
        assert events[kind]["data"]["round_size"] == 2 and events[kind]["data"]["steps"] == 12


def test_more_steps_copy_the_better_model_and_a_bad_dataset_fails_alike(
        ingested, tmp_path, trained_models, standin_trainer):
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home")}
    env.pop("RETRAIN_REDIS_URL", None)

    def train(out, *args, dataset=ingested):
        return subprocess.run([*standin_trainer, "train", "--model", "cnn", "--dataset", dataset,
                               "--out", str(out), "--batch-size", "32", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    weak = train(tmp_path / "w" / "model", "--steps-per-epoch", str(WEAK_STEPS))
    good = train(tmp_path / "g" / "model")  # a full pass
    accuracies = [json.loads(done.stdout.strip().splitlines()[-1])["val_accuracy"]
                  for done in (weak, good)]
    assert accuracies == [trained_models.weak.val_accuracy, trained_models.good.val_accuracy]
    refused = train(tmp_path / "x" / "model", dataset=str(tmp_path / "nothing"))
    assert refused.returncode == 2
    assert "not an ingested dataset (no metadata.json)" in refused.stderr


def test_a_training_that_cannot_start_fails_alike(ingested, tmp_path, redis_handle, r,
                                                  standin_trainer):
    """A batch larger than the dataset: the same exit, message, progress and training.failed
    from both (the test trainer's own checks, not only the shared command-line ones)."""
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
           "RETRAIN_REDIS_URL": redis_handle.url}
    runs = tmp_path / "home" / "runs"  # where a model the selector is sent must lie
    done = {}
    for kind, entry in (("real", (sys.executable, "-m", "retrain.cli")),
                        ("stand", standin_trainer)):
        done[kind] = subprocess.run(
            [*entry, "train", "--model", "cnn", "--dataset", ingested, "--out",
             str(runs / kind / "model"), "--run-id", kind, "--batch-size", "5000",
             "--sink", "stream", "--round-size", "3"],
            env=env, capture_output=True, text=True, timeout=300)
    assert done["real"].returncode == done["stand"].returncode == 1
    for kind in ("real", "stand"):
        assert "fewer than one global batch of 5000" in done[kind].stderr, done[kind].stderr
        assert r.hget(progress_key(kind, "cnn"), "state") == b"failed"
        assert not (runs / kind / "model").exists()
    events = {e["data"]["run_id"]: e for e in read_stream(r)}
    assert {k: e["type"] for k, e in events.items()} == {
        "real": "dev.retrain.training.failed", "stand": "dev.retrain.training.failed"}
    assert events["real"]["data"]["reason"] == events["stand"]["data"]["reason"]
