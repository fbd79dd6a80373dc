"""Training, side by side (issue: training).

    .venv/bin/python benchmarks/bench_training.py [--train 20000 --test 4000] [--steps 300]
    .venv/bin/python benchmarks/bench_training.py --quick    (a smaller try)

Prints, on a generated stand-in dataset ingested into TFRecord shards:
  1. examples/s of our input pipeline + training loop vs a plain ``model.fit`` on the same
     images as in-memory NumPy arrays (same model, same batch size), steady state
  2. ``retrain train`` itself, run as a user runs it (a process, progress to Redis), vs a bare
     ``model.fit`` process on the same images and steps: steady-state examples/s (the
     trainer's from its own progress records), process start to exit, and where each
     process's seconds go (import, setup, tracing, steps, validation, checkpoint,
     TensorBoard, export)
  3. two local worker processes (all-reduce over 127.0.0.1) vs one: examples/s, and wall
     time to the same number of steps
  4. test accuracy per variant after a fixed budget of steps
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

from _common import ROOT, heading, line, loopback_redis, median, timed, verdict

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
    from dataset.example import read_shards
    from dataset.store import shard_paths

    images, y_all = read_shards(shard_paths(dataset_uri, "train"))
    x_all = (images.astype(np.float32) / 255.0)[..., None]
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
    line("ours: TFRecord shards read as arrays → shuffle → batch → scale → prefetch",
         f"{median(ours):8.0f} examples/s")
    line("plain model.fit(x, y) on in-memory arrays", f"{median(plain):8.0f} examples/s")
    return [verdict("ours / plain", median(ours) / median(plain), 0.9, lower_is_better=False)]


PHASES = (  # (label, the trainer's phase, the bare fit's) in the order a process goes through them
    ("Python start, command line, result, exit", "start", "start"),
    ("import TensorFlow", "import", "import"),
    ("setup: verify shards, build model, pipeline", "setup", "setup"),
    ("tracing and first step", "first_step", "first_step"),
    ("the other steps", "steps", "steps"),
    ("validation", "validation", None),
    ("checkpoint (BackupAndRestore)", "checkpoint", None),
    ("TensorBoard", "tensorboard", None),
    ("export (SavedModel, weights)", "export", None),
    ("the rest (weights digest, clean-up)", "finish", None),
)


def _steady(points: list[dict], skip: int, batch: int) -> float:
    """Examples/s between the first progress record at or past step ``skip`` and the last."""
    first = next(p for p in points if p["step"] >= skip)
    last = points[-1]
    return (last["step"] - first["step"]) * batch / (last["at"] - first["at"])


def _retrain_train(uri: str, out: Path, steps: int, batch: int, redis_url: str, run_id: str
                   ) -> tuple[float, dict]:
    env = {**os.environ, "RETRAIN_HOME": str(out.parent / "home"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "RETRAIN_REDIS_URL": redis_url}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "train", "--model", "cnn", "--dataset", uri,
         "--out", str(out), "--steps-per-epoch", str(steps), "--batch-size", str(batch),
         "--run-id", run_id], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return wall, json.loads((out.parent / "result.json").read_text())


def _bare_fit(root: Path, steps: int, batch: int, skip: int) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "_bare_fit.py"), "--root", str(root),
         "--steps", str(steps), "--batch", str(batch), "--skip", str(skip)],
        capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def trainer_vs_bare_fit(uri: str, root: Path, work: Path, steps: int, batch: int,
                        reps: int, skip: int = 30) -> list[bool]:
    """``retrain train`` as a user runs it vs a bare ``model.fit`` process, alternating."""
    from services.trainer.progress import read

    heading(f"2. retrain train (cnn, {steps} steps, batch {batch}) vs a bare model.fit process "
            f"on the same data and steps, median of {reps}, alternating")
    ours, bare = [], []
    with loopback_redis(work / "redis") as (client, url):
        for n in range(reps):
            wall, result = _retrain_train(uri, work / f"train-{n}" / "model", steps, batch, url,
                                          f"bench-{n}")
            points = read(client, f"bench-{n}", "cnn").points
            ours.append((wall, result, _steady(points, skip, batch)))
            wall, fitted = _bare_fit(root, steps, batch, skip)
            bare.append((wall, fitted, fitted["steady_examples_per_second"]))
    ours_rate, bare_rate = median([o[2] for o in ours]), median([b[2] for b in bare])
    ours_wall, bare_wall = median([o[0] for o in ours]), median([b[0] for b in bare])
    line(f"retrain train, steady state from step {skip}", f"{ours_rate:8.0f} examples/s "
         f"(its progress records; {[round(o[2]) for o in ours]})")
    line("bare model.fit, the same steps", f"{bare_rate:8.0f} examples/s "
         f"({[round(b[2]) for b in bare]})")
    met = [verdict("steady state, retrain train / bare fit", ours_rate / bare_rate, 0.9,
                   lower_is_better=False)]
    fit = [median([(_phase(w, r, "first_step") + _phase(w, r, "steps")) for w, r, _ in side])
           for side in (ours, bare)]
    line("the whole fit (first step included), retrain train / bare fit",
         f"{fit[1] / fit[0]:.3f}x  ({fit[0]:.1f} s vs {fit[1]:.1f} s for the same "
         f"{steps} steps: what the steady state leaves out)")
    line("process start to exit", f"{ours_wall:6.1f} s vs {bare_wall:5.1f} s → "
         f"{ours_wall / bare_wall:.2f}x")
    print("  where the seconds go (medians)          retrain train   bare fit   difference")
    for label, mine, theirs in PHASES:
        a = median([_phase(o[0], o[1], mine) for o in ours])
        b = median([_phase(w, f, theirs) for w, f, _ in bare]) if theirs else 0.0
        print(f"    {label:<44} {a:6.2f} s   {b:6.2f} s   {a - b:+6.2f} s")
    return met


def _phase(wall: float, result: dict, phase: str) -> float:
    """A process's seconds in ``phase``; ``start``: what it spent outside its own clock."""
    phases = result.get("phases") or {"steps": result.get("fit_seconds", 0.0)}
    if phase == "start":
        return wall - result["seconds"] - phases.get("import", 0.0)
    return float(phases.get(phase, result.get(phase, 0.0)))


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
    heading(f"3. two local workers vs one (cnn, {steps} steps, batch {batch} per worker)")
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

    heading(f"4. test accuracy per variant after {steps} steps of batch {batch}")
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
    parser.add_argument("--quick", action="store_true",
                        help="a smaller try: 6,000 + 1,000 images, 100 steps, one repetition")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.steps, args.reps = 6_000, 1_000, 100, 1
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
            results += trainer_vs_bare_fit(uri, root, work, args.steps, args.batch, args.reps)
        if 3 not in skip:
            workers_two_vs_one(uri, work, args.steps, args.batch)
        if 4 not in skip:
            accuracy_per_variant(uri, work, args.steps, args.batch)
        print(f"\n{sum(results)} of {len(results)} targets met")


if __name__ == "__main__":
    main()
