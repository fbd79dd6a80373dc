"""Training one model variant on an ingested dataset, and exporting it for serving.

One code path for one process, N local processes and a TFJob: when TF_CONFIG describes a
cluster, training runs under ``MultiWorkerMirroredStrategy`` (collective all-reduce), the
global batch is the per-replica batch times the replicas, and only the chief keeps the
model (the others write to a scratch folder that is removed). ``BackupAndRestore`` saves
every ``checkpoint_every`` steps, so a run killed mid-epoch resumes from its last checkpoint
when started again with the same output folder.

Nothing is done each step that need not be: progress is read every ``PROGRESS_EVERY`` steps,
TensorBoard writes once an epoch, the checkpoint is saved each epoch but the last (or every
``checkpoint_every`` steps), and the validation split is evaluated once, after the last
epoch. ``TrainResult.phases`` says where the seconds went.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from core.errors import RetrainError
from dataset.store import load_metadata, verify
from services.trainer import data, export, models
from services.trainer.callbacks import Checkpoint, ProgressCallback
from services.trainer.cluster import Role, role_from_tf_config
from services.trainer.phases import FitClock
from services.trainer.spec import Progress, TrainConfig, TrainResult, warm_start_weights

log = logging.getLogger(__name__)
DETERMINISTIC_THREADS = 1  # per op and between ops: a reduction's order cannot depend on the
# machine's cores or on what else runs (a run's other trainings)
__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train"]


class TrainingError(RetrainError):
    """Training cannot go on; the message names the model and the cause."""


def _strategy(role: Role, timeout: float) -> tf.distribute.Strategy:
    if not role.distributed:
        return tf.distribute.get_strategy()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def deterministic() -> None:
    """TensorFlow's op determinism, with a fixed number of threads: the same training on the
    same machine then gives the same weights, bit for bit (slower)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(DETERMINISTIC_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(DETERMINISTIC_THREADS)
    except RuntimeError as exc:  # this process ran TensorFlow before (not retrain train's)
        log.warning("op determinism without fixed threads: %s", exc)
    tf.config.experimental.enable_op_determinism()


def warm_start(model: keras.Model, source: str, model_type: str) -> str:
    """Load a previous model's weights when its architecture matches; says what happened."""
    weights, note = warm_start_weights(source, model_type)
    if weights is not None:
        model.load_weights(str(weights))
    return note


def train(config: TrainConfig, progress: Progress | None = None,
          role: Role | None = None) -> TrainResult:
    """Train ``config.model_type`` and export it to ``config.out`` (a SavedModel folder)."""
    started = time.perf_counter()
    role = role or role_from_tf_config(os.environ.get("TF_CONFIG"))
    if config.deterministic:
        deterministic()  # before TensorFlow's runtime starts: its threads are set then
    strategy = _strategy(role, config.collective_timeout)  # before any other TensorFlow op
    problem = verify(config.dataset_uri)  # TFRecord readers stop quietly at a truncated shard
    if problem:
        raise TrainingError(f"dataset {config.dataset_uri} cannot be trained on: {problem}")
    meta = load_metadata(config.dataset_uri)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    train_count = int(meta["splits"]["train"]["count"])  # type: ignore[index]
    usable = train_count - math.ceil(train_count / data.VALIDATION_EVERY)
    if usable < global_batch:
        raise TrainingError(
            f"dataset has {usable} training records, fewer than one global batch of {global_batch}")
    steps = config.steps_per_epoch or max(1, usable // global_batch)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = models.build(config.model_type, config.learning_rate)
        note = warm_start(model, config.warm_start, config.model_type) if config.warm_start else ""
    if note:
        log.info("%s: %s", config.model_type, note)
    train_ds, val_ds = data.train_and_validation(config.dataset_uri, global_batch, config.seed,
                                                 config.deterministic)
    work = config.out.parent
    scratch = work / f".scratch-{role.name}"  # what a non-chief writes, then removes
    clock = FitClock()
    tracker = ProgressCallback(progress or (lambda _: None), steps * config.epochs, global_batch,
                               strategy.num_replicas_in_sync)
    callbacks = _callbacks(config, work if role.is_chief else scratch, clock, tracker)
    phases = {"setup": round(time.perf_counter() - started, 3)}
    clock.fit_called()
    fit_started = time.perf_counter()
    try:  # validated once, after the last epoch: only its figures are kept
        history = model.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps,
                            validation_data=val_ds, validation_freq=config.epochs,
                            callbacks=callbacks, verbose=0)
    except tf.errors.OpError as exc:
        raise TrainingError(f"training {config.model_type} failed ({role.name}): "
                            f"{exc.message}") from exc
    fit_seconds = time.perf_counter() - fit_started
    phases.update(clock.phases(fit_seconds))
    val_loss, val_acc = _validation(model, history, val_ds)
    info = {"model_type": config.model_type, "dataset_digest": meta["digest"],
            "val_accuracy": val_acc, "workers": role.workers, "seed": config.seed,
            "deterministic": config.deterministic}
    exported = time.perf_counter()
    _export(model, config.out, info, role, scratch)
    phases["export"] = round(time.perf_counter() - exported, 3)
    if role.is_chief:
        shutil.rmtree(work / "backup", ignore_errors=True)  # finished: nothing to resume
    total = steps * config.epochs
    digest = weights_digest(model)
    seconds = time.perf_counter() - started
    phases["finish"] = round(seconds - sum(phases.values()), 3)
    return TrainResult(
        model_uri=str(config.out),
        val_accuracy=val_acc,
        val_loss=val_loss,
        seconds=seconds,
        steps=total,
        examples_per_second=(total - tracker.resumed_from) * global_batch / max(fit_seconds, 1e-9),
        fit_seconds=fit_seconds,
        digest=str(meta["digest"]),
        workers=role.workers,
        resumed_from_step=tracker.resumed_from,
        warm_start=note,
        weights_digest=digest,
        seed=config.seed,
        deterministic=config.deterministic,
        phases=phases,
    )


def _validation(model: keras.Model, history: keras.callbacks.History,
                val_ds: tf.data.Dataset) -> tuple[float, float]:
    """The last epoch's validation loss and accuracy; measured here when the fit had no step
    left to run (resumed from a checkpoint of its last step), which Keras then skips."""
    figures = history.history
    if "val_loss" not in figures:
        measured = model.evaluate(val_ds, verbose=0, return_dict=True)
        figures = {"val_loss": [measured["loss"]], "val_accuracy": [measured["accuracy"]]}
    return float(figures["val_loss"][-1]), float(figures["val_accuracy"][-1])


def _callbacks(config: TrainConfig, logs: Path, clock: FitClock,
               tracker: ProgressCallback) -> list[keras.callbacks.Callback]:
    """Checkpoints (to resume), TensorBoard (into ``logs``) and progress, with the clock's
    marks timing the first two."""
    return [
        clock.opening(),
        Checkpoint(str(config.out.parent / "backup"),
                   save_freq=config.checkpoint_every or "epoch"),
        clock.after("checkpoint"),
        keras.callbacks.TensorBoard(str(logs / "tensorboard"), update_freq="epoch"),
        clock.after("tensorboard"),
        tracker,
    ]


def _export(model: keras.Model, out: Path, info: dict[str, object], role: Role,
            scratch: Path) -> None:
    """The chief writes the model to ``out`` (whole or not at all); every other worker takes
    part in saving too (variables are synchronised) but into ``scratch``, then removes it."""
    if role.is_chief:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        export.export(model, tmp, info)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    else:
        export.export(model, scratch / "model", info)
    shutil.rmtree(scratch, ignore_errors=True)


def weights_digest(model: keras.Model) -> str:
    from blake3 import blake3

    hasher = blake3()
    for weight in model.get_weights():
        hasher.update(weight.tobytes())
    return hasher.hexdigest()
