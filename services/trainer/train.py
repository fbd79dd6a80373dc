"""Training one model variant on an ingested dataset, and exporting it for serving."""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.trainer.tf_env import configure

configure()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from retrain.errors import RetrainError  # noqa: E402
from services.trainer import data, export, models  # noqa: E402
from workflows.ingest import load_metadata, verify  # noqa: E402

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


class TrainingError(RetrainError):
    """Training cannot go on; the message names the model and the cause."""


@dataclass(frozen=True)
class TrainConfig:
    model_type: str
    dataset_uri: str
    out: Path
    epochs: int = 1
    steps_per_epoch: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 7


@dataclass(frozen=True)
class TrainResult:
    model_uri: str
    val_accuracy: float
    val_loss: float
    seconds: float
    steps: int
    examples_per_second: float
    digest: str


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(self, report: Progress, planned: int, batch: int, every: int = 10) -> None:
        super().__init__()
        self._report = report
        self._planned = planned
        self._batch = batch
        self._every = every
        self._step = 0
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._step += 1
        if self._step % self._every == 0 or self._step == self._planned:
            elapsed = time.perf_counter() - self._started
            logs = logs or {}
            self._report({
                "step": self._step,
                "planned": self._planned,
                "loss": round(float(logs.get("loss", 0.0)), 4),
                "accuracy": round(float(logs.get("accuracy", 0.0)), 4),
                "examples_per_second": round(self._step * self._batch / max(elapsed, 1e-9), 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            })


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train ``config.model_type`` and export it to ``config.out`` (a SavedModel folder)."""
    started = time.perf_counter()
    problem = verify(config.dataset_uri)  # TFRecord readers stop quietly at a truncated shard
    if problem:
        raise TrainingError(f"dataset {config.dataset_uri} cannot be trained on: {problem}")
    meta = load_metadata(config.dataset_uri)
    train_count = int(meta["splits"]["train"]["count"])  # type: ignore[index]
    usable = train_count - math.ceil(train_count / data.VALIDATION_EVERY)
    if usable < config.batch_size:
        raise TrainingError(
            f"dataset has {usable} training records, fewer than one batch of {config.batch_size}"
        )
    steps = config.steps_per_epoch or max(1, usable // config.batch_size)
    tf.keras.utils.set_random_seed(config.seed)
    train_ds, val_ds = data.train_and_validation(config.dataset_uri, config.batch_size, config.seed)
    model = models.build(config.model_type, config.learning_rate)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.TensorBoard(str(config.out.parent / "tensorboard"), update_freq="epoch"),
    ]
    if progress:
        callbacks.append(_ProgressCallback(progress, steps * config.epochs, config.batch_size))
    try:
        history = model.fit(
            train_ds, epochs=config.epochs, steps_per_epoch=steps,
            validation_data=val_ds, callbacks=callbacks, verbose=0,
        )
    except tf.errors.OpError as exc:
        raise TrainingError(f"training {config.model_type} failed reading data: {exc.message}") from exc
    val_loss = float(history.history["val_loss"][-1])
    val_acc = float(history.history["val_accuracy"][-1])
    tmp = config.out.with_name(config.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export.export(model, tmp)
    shutil.rmtree(config.out, ignore_errors=True)
    tmp.rename(config.out)
    seconds = time.perf_counter() - started
    total = steps * config.epochs
    return TrainResult(
        model_uri=str(config.out),
        val_accuracy=val_acc,
        val_loss=val_loss,
        seconds=seconds,
        steps=total,
        examples_per_second=total * config.batch_size / max(seconds, 1e-9),
        digest=str(meta["digest"]),
    )
