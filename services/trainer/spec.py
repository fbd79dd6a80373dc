"""What a training is asked to do (``TrainConfig``) and what it gives back (``TrainResult``).

No TensorFlow here: the process around a training (progress, ``result.json``, events) and
everything that reads a result use these without loading it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigurationError
from repository.layout import INFO_FILE, WEIGHTS_FILE
from services.trainer.options import SEED

VALIDATION_EVERY = 10  # one training record in ten is held out for validation
Progress = Callable[[dict[str, Any]], None]  # receives each progress point as it is measured


@dataclass(frozen=True)
class TrainConfig:
    model_type: str
    dataset_uri: str
    out: Path
    epochs: int = 1
    steps_per_epoch: int | None = None
    batch_size: int = 64  # per replica; the global batch is this times the replicas
    learning_rate: float = 1e-3
    seed: int = SEED
    checkpoint_every: int | None = None  # steps between checkpoints; None: every epoch
    warm_start: str | None = None  # a model exported by retrain (e.g. the champion's folder)
    collective_timeout: float = 600.0  # a dead peer fails the run instead of hanging it
    deterministic: bool = False  # TensorFlow's op determinism (TrainOptions.deterministic)


@dataclass(frozen=True)
class TrainResult:
    model_uri: str
    val_accuracy: float
    val_loss: float
    seconds: float
    steps: int
    examples_per_second: float  # in the training loop (validation included), all workers
    digest: str
    workers: int = 1
    fit_seconds: float = 0.0  # the training loop alone; ``seconds`` adds setup and export
    resumed_from_step: int = 0
    warm_start: str = ""
    weights_digest: str = ""  # equal on every worker when the all-reduce kept them in sync
    seed: int = SEED  # what the training was seeded with
    deterministic: bool = False  # whether it ran with TensorFlow's op determinism
    # where the seconds went: import (TensorFlow), setup, first_step (tracing), steps,
    # validation, checkpoint, tensorboard, export, finish; all but import add up to ``seconds``
    phases: dict[str, float] = field(default_factory=dict)


def warm_start_weights(source: str, model_type: str) -> tuple[Path | None, str]:
    """Whether a ``model_type`` can start from the model exported at ``source``: its weights
    file when it is the same variant (None when not), and the note saying what happens.
    Raises ConfigurationError when ``source`` is not a model exported by retrain."""
    folder = Path(source)
    info_file, weights = folder / INFO_FILE, folder / WEIGHTS_FILE
    if not info_file.is_file() or not weights.is_file():
        raise ConfigurationError(f"cannot warm-start from {source}: not a model exported by "
                                 f"retrain (no {INFO_FILE} and {WEIGHTS_FILE})")
    kind = json.loads(info_file.read_text()).get("model_type")
    if kind != model_type:
        return None, f"trained from scratch: {source} is a {kind}, not a {model_type}"
    return weights, f"warm-started from {source}"
