"""A bare ``model.fit``, as a process of its own: what ``bench_training.py`` compares ``retrain
train`` with. Reads the stand-in's IDX files into NumPy arrays (holding out one image in ten,
as the trainer does for validation), builds the same cnn, fits it for ``--steps`` batches and
prints one JSON line: where its seconds went and its steady-state examples/s (from step
``--skip`` to the last, taken as the trainer's progress records are: by step count and time).

    .venv/bin/python benchmarks/_bare_fit.py --root DATA --steps 300 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STARTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip", type=int, default=30)
    args = parser.parse_args()
    import _common  # noqa: F401  (the project on sys.path, Keras 2, TensorFlow quiet)

    from core.tf_start import configure

    configure()
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from dataset import idx
    from dataset.layout import BASE_FILES
    from services.trainer import models

    imported = time.perf_counter()
    images_name, labels_name = BASE_FILES["train"]
    images = np.concatenate(list(idx.iter_images(args.root / images_name)))
    labels = idx.read_labels(args.root / labels_name)
    kept = np.arange(len(labels)) % 10 != 0  # the trainer's validation hold-out
    x = (images[kept].astype(np.float32) / 255.0)[..., None]
    y = labels[kept].astype(np.int64)
    needed = args.steps * args.batch
    x, y = np.resize(x, (needed, *x.shape[1:])), np.resize(y, needed)  # repeated as needed
    tf.keras.utils.set_random_seed(7)
    model = models.build("cnn")
    loaded = time.perf_counter()
    marks: dict[int, float] = {}

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True  # no conversion of the logs to NumPy each batch
            self.count = 0

        def on_train_batch_end(self, batch, logs=None):  # noqa: ANN001
            self.count += 1
            if self.count in (1, args.skip, args.steps):
                marks[self.count] = time.perf_counter()

    model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=True, verbose=0, callbacks=[Clock()])
    fitted = time.perf_counter()
    print(json.dumps({
        "phases": {"import": imported - STARTED, "setup": loaded - imported,
                   "first_step": marks[1] - loaded, "steps": fitted - marks[1]},
        "fit_seconds": fitted - loaded,
        "seconds": fitted - imported,  # as the trainer's: the import apart
        "steady_examples_per_second":
            (args.steps - args.skip) * args.batch / (marks[args.steps] - marks[args.skip]),
    }))


if __name__ == "__main__":
    main()
