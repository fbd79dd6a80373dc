"""Training, side by side (issue: training).

    .venv/bin/python benchmarks/bench_training.py [--train 20000 --test 4000] [--steps 300]

Prints, on a generated stand-in dataset ingested into TFRecord shards:
  1. examples/s of our input pipeline + training loop vs a plain ``model.fit`` on the same
     images as in-memory NumPy arrays (same model, same batch size), steady state
  2. two local worker processes (all-reduce over 127.0.0.1) vs one: examples/s, and wall
     time to the same number of steps
  3. test accuracy per variant after a fixed budget of steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, heading, line, median, timed, verdict

from core.tf_start import configure
from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from dataset.seed import write_standin


class _Clock:
    """Seconds between the end of step ``skip`` and the end of the last step."""

    def __init__(self, skip: int) -> None:
        import tf_keras as keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):  # noqa: ANN001
                outer.steps += 1
                if outer.steps == skip:
                    outer.started = time.perf_counter()
                outer.ended = time.perf_counter()

        self.steps, self.started, self.ended, self.skip = 0, 0.0, 0.0, skip
        self.callback = Callback()

    def examples_per_second(self, batch: int) -> float:
        return (self.steps - self.skip) * batch / (self.ended - self.started)


def pipeline_vs_numpy(dataset_uri: str, steps: int, batch: int, reps: int) -> list[bool]:
    import numpy as np
    import tensorflow as tf

    from services.trainer import data, models

    heading(f"1. our pipeline vs plain model.fit on NumPy arrays (cnn, batch {batch}, "
            f"{steps} steps, first 30 not timed, median of {reps})")
    train_ds, _ = data.train_and_validation(dataset_uri, batch)
    images, labels = [], []
    for x, y in data.records(dataset_uri, "train").map(data._parse).batch(8192):
        images.append(x.numpy())
        labels.append(y.numpy())
    x_all, y_all = np.concatenate(images), np.concatenate(labels)
    ours, plain = [], []
    for _ in range(reps):
        tf.keras.utils.set_random_seed(1)
        clock = _Clock(30)
        models.build("cnn").fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=0,
                                callbacks=[clock.callback])
        ours.append(clock.examples_per_second(batch))
        clock = _Clock(30)
        needed = steps * batch
        reps_needed = -(-needed // len(x_all))
        x = np.concatenate([x_all] * reps_needed)[:needed]
        y = np.concatenate([y_all] * reps_needed)[:needed]
        models.build("cnn").fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0,
                                callbacks=[clock.callback])
        plain.append(clock.examples_per_second(batch))
    line("ours: TFRecord shards → parse → cache → shuffle → batch → prefetch",
         f"{median(ours):8.0f} examples/s")
    line("plain model.fit(x, y) on in-memory arrays", f"{median(plain):8.0f} examples/s")
    return [verdict("ours / plain", median(ours) / median(plain), 0.9, lower_is_better=False)]


def _train_cli(dataset_uri: str, out: Path, steps: int, batch: int, workers: int) -> dict:
    env = {**os.environ, "RETRAIN_HOME": str(out.parent / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RETRAIN_REDIS_URL", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "train", "--model", "cnn", "--dataset", dataset_uri,
         "--out", str(out), "--steps-per-epoch", str(steps), "--batch-size", str(batch),
         "--workers", str(workers)], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads((out.parent / "result.json").read_text())
    result["wall"] = time.perf_counter() - started
    return result


def workers_two_vs_one(dataset_uri: str, work: Path, steps: int, batch: int) -> None:
    heading(f"2. two local workers vs one (cnn, {steps} steps, batch {batch} per worker)")
    one = _train_cli(dataset_uri, work / "w1" / "model", steps, batch, 1)
    two = _train_cli(dataset_uri, work / "w2" / "model", steps, batch, 2)
    for label, r in (("one worker", one), ("two workers (all-reduce on 127.0.0.1)", two)):
        line(label, f"{r['examples_per_second']:6.0f} examples/s in fit ({r['fit_seconds']:5.1f} s);"
                    f" {r['seconds']:5.1f} s with setup + export; {r['wall']:5.1f} s wall")
    line("examples/s in the training loop, two / one",
         f"{two['examples_per_second'] / one['examples_per_second']:.3f}x")
    line("training loop time to the same steps, two / one",
         f"{two['fit_seconds'] / one['fit_seconds']:.3f}x")
    line("wall time to the same steps (process start to exit), two / one",
         f"{two['wall'] / one['wall']:.3f}x")
    print("  (2 cores: two workers share them, each step all-reduces 93k gradients over loopback;\n"
          "   the ratio shows the all-reduce overhead, not a cluster's scaling)")


def accuracy_per_variant(dataset_uri: str, work: Path, steps: int, batch: int) -> None:
    import tensorflow as tf

    from dataset.records import test_arrays
    from services.trainer.train import TrainConfig, train

    heading(f"3. test accuracy per variant after {steps} steps of batch {batch}")
    x_test, y_test = test_arrays(dataset_uri)
    for variant in ("cnn", "dropout", "batch_norm"):
        seconds, result = timed(lambda v=variant: train(
            TrainConfig(v, dataset_uri, work / v / "model", steps_per_epoch=steps, batch_size=batch)))
        model = tf.saved_model.load(result.model_uri)
        probs = model.signatures["predict_images"](images=x_test[..., 0])["probabilities"]
        accuracy = float(tf.reduce_mean(tf.cast(tf.argmax(probs, 1) == y_test, tf.float32)))
        line(variant, f"test accuracy {accuracy:.4f}  (validation {result.val_accuracy:.4f}, "
                      f"{seconds:5.1f} s)")


def main() -> None:
    configure()  # TensorFlow quiet and on Keras 2, before anything here imports it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=4_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = parser.parse_args()
    skip = {int(x) for x in args.skip.split(",") if x}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        root = work / "data"
        seconds, _ = timed(lambda: write_standin(root, args.train, args.test))
        uri = ingest(root, work / "store", fingerprint(root), dataset_key="bench").dataset_uri
        print(f"stand-in dataset: {args.train:,} train + {args.test:,} test images "
              f"({seconds:.0f} s to generate), ingested to {uri}")
        results = []
        if 1 not in skip:
            results += pipeline_vs_numpy(uri, args.steps, args.batch, args.reps)
        if 2 not in skip:
            workers_two_vs_one(uri, work, args.steps, args.batch)
        if 3 not in skip:
            accuracy_per_variant(uri, work, args.steps, args.batch)
        print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
