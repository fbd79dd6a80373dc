"""The test trainer: ``retrain train`` as it is, with only the learning replaced.

For tests whose subject is not training (the runner, both caches, leases, the selector, the
stack, the dashboard). The command line is parsed by the real ``retrain`` CLI, and the real
process around a training runs: the options' checks, progress in Redis, ``result.json``
beside the model, ``model.trained`` or ``training.failed`` to the sink, the summary printed.
Only ``services.trainer.process.fit`` is replaced: instead of TensorFlow learning, it checks
the dataset as the trainer does, reports progress at the trainer's steps (every tenth and the
last), and exports a copy of a model trained
once for the test run (``tests/conftest.py: trained_models``):

- a training of at most ``WEAK_STEPS`` steps gets the weak model, a longer one the good one,
  so more steps still make a better model;
- the copy's ``assets.extra/retrain.json`` says what this training was (variant, dataset,
  parameters, run), so two different trainings never leave identical files;
- ``RETRAIN_STANDIN_STEP_SECONDS`` makes each step take that long (a test that needs a
  training still running when it acts);
- ``--workers N`` starts N test trainers with their TF_CONFIG, as the trainer does; the
  chief keeps the model.

Not modelled: resuming from a checkpoint (``resumed_from_step`` is 0), whether warm-start
weights fit the variant (only the note is given), TensorBoard's logs and the TensorFlow
thread settings; tests whose subject those are run the real trainer.

Started as ``python tests/standin_trainer.py train --model ...``: the runner's
``RETRAIN_TRAIN_COMMAND`` names it, so the runner starts it exactly as it starts the real one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the code beside these tests, not another copy
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # (and not tests/ itself)

from blake3 import blake3  # noqa: E402

from core.errors import RetrainError  # noqa: E402
from dataset.store import load_metadata, verify  # noqa: E402
from services.trainer import process  # noqa: E402
from services.trainer.cluster import Role  # noqa: E402
from repository.layout import INFO_FILE, WEIGHTS_FILE  # noqa: E402
from services.trainer.spec import (  # noqa: E402
    VALIDATION_EVERY, Progress, TrainConfig, TrainResult,
    warm_start_weights)

MODELS_ENV = "RETRAIN_STANDIN_MODELS"  # a folder holding good/ and weak/ (model + result.json)
STEP_SECONDS_ENV = "RETRAIN_STANDIN_STEP_SECONDS"
WEAK_STEPS = 5


class StandInError(RetrainError):
    """What the real trainer's TrainingError says, for the same causes."""


def fit(config: TrainConfig, report: Progress, role: Role) -> TrainResult:
    started = time.perf_counter()
    problem = verify(config.dataset_uri)
    if problem:
        raise StandInError(f"dataset {config.dataset_uri} cannot be trained on: {problem}")
    meta = load_metadata(config.dataset_uri)
    global_batch = config.batch_size * role.workers
    count = int(meta["splits"]["train"]["count"])  # type: ignore[index]
    usable = count - math.ceil(count / VALIDATION_EVERY)
    if usable < global_batch:
        raise StandInError(f"dataset has {usable} training records, fewer than one global "
                           f"batch of {global_batch}")
    steps = (config.steps_per_epoch or max(1, usable // global_batch)) * config.epochs
    # the real trainer's check and note (only loading the weights is left out)
    note = warm_start_weights(config.warm_start, config.model_type)[1] if config.warm_start else ""
    source = Path(os.environ[MODELS_ENV]) / ("weak" if steps <= WEAK_STEPS else "good")
    if not (source / "result.json").is_file():
        raise StandInError(f"the test trainer has no models in {source.parent}: a test that "
                           "starts trainings asks for the standin_trainer fixture")
    trained = json.loads((source / "result.json").read_text())

    pause = float(os.environ.get(STEP_SECONDS_ENV, "0"))
    fit_started = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(pause)
        if step % 10 == 0 or step == steps:
            done = step / steps  # from chance (loss ln 10) down to the model's own figures
            elapsed = max(time.perf_counter() - fit_started, 1e-9)
            report({"step": step, "planned": steps, "resumed_from": 0,
                    "loss": round(2.3026 + (trained["val_loss"] - 2.3026) * done, 4),
                    "accuracy": round(0.1 + (trained["val_accuracy"] - 0.1) * done, 4),
                    "examples_per_second": round(step * global_batch / elapsed, 1),
                    "peak_rss_mb": 0.0})
    fit_seconds = time.perf_counter() - fit_started

    if role.is_chief:
        tmp = config.out.with_name(config.out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source / "model", tmp)
        info = {"model_type": config.model_type, "dataset_digest": meta["digest"],
                "val_accuracy": trained["val_accuracy"], "workers": role.workers,
                "seed": config.seed, "deterministic": config.deterministic,
                "stand_in": {"source": source.name, "steps": steps, "epochs": config.epochs,
                             "batch_size": config.batch_size,
                             "learning_rate": config.learning_rate,
                             "warm_start": config.warm_start, "out": str(config.out)}}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        shutil.rmtree(config.out, ignore_errors=True)
        tmp.rename(config.out)
    weights = blake3((source / "model" / WEIGHTS_FILE).read_bytes())
    weights.update(json.dumps([config.model_type, meta["digest"], steps, config.batch_size,
                               config.learning_rate, config.warm_start]).encode())
    return TrainResult(
        model_uri=str(config.out), val_accuracy=trained["val_accuracy"],
        val_loss=trained["val_loss"], seconds=time.perf_counter() - started, steps=steps,
        examples_per_second=steps * global_batch / max(fit_seconds, 1e-9),
        digest=str(meta["digest"]), workers=role.workers, fit_seconds=fit_seconds,
        warm_start=note, weights_digest=weights.hexdigest(), seed=config.seed,
        deterministic=config.deterministic)


def command() -> str:
    """``RETRAIN_TRAIN_COMMAND`` for this stand-in."""
    return shlex.join([sys.executable, str(Path(__file__).resolve())])


if __name__ == "__main__":
    process.fit = fit  # the one thing replaced
    from services.trainer import cluster

    cluster.LOCAL_ENTRY = tuple(shlex.split(command()))  # --workers N: N test trainers
    from retrain.cli import main

    sys.exit(main())
