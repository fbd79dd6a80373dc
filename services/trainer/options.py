"""A training's parameters and the one command line they make.

``TrainOptions`` is what ``retrain train`` accepts; ``train_argv`` is the only place its
flags are written. The local runner, the local multi-worker launcher and the hera
definition (whose values are Argo placeholders such as ``{{inputs.parameters.model}}``)
all build their command lines with it, so they cannot drift apart. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.settings import MODEL_TYPES
from repository.layout import in_runs_folder

# (field, flag) in the order they appear on a command line
FLAGS: tuple[tuple[str, str], ...] = (
    ("model", "--model"),
    ("dataset", "--dataset"),
    ("out", "--out"),
    ("run_id", "--run-id"),
    ("epochs", "--epochs"),
    ("steps_per_epoch", "--steps-per-epoch"),
    ("batch_size", "--batch-size"),
    ("learning_rate", "--learning-rate"),
    ("workers", "--workers"),
    ("checkpoint_every", "--checkpoint-every"),
    ("warm_start", "--warm-start"),
    ("sink", "--sink"),
    ("round_size", "--round-size"),
    ("seed", "--seed"),
    ("deterministic", "--deterministic"),
)
COMMAND = "train"
SEED = 7  # a training's random seed unless --seed says another (part of the training cache's key)
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32 bits
STREAM_SINK = "stream"  # --sink stream: model.trained goes to the Redis stream retrain:events
# how a process on this machine runs the ``retrain`` console script (the image's entry point);
# -P: the modules installed, never a same-named package in the folder it was started from
LOCAL_ENTRY: tuple[str, ...] = (sys.executable, "-P", "-m", "retrain.cli")


def train_argv(values: Mapping[str, object]) -> list[str]:
    """``train --flag value ...`` for every field of ``values`` that is not None (values are
    written as they are: numbers, paths, or a workflow engine's placeholders; booleans as
    ``true``/``false``)."""
    unknown = set(values) - {name for name, _ in FLAGS}
    if unknown:
        raise ValueError(f"not training options: {sorted(unknown)}")
    argv = [COMMAND]
    for name, flag in FLAGS:
        value = values.get(name)
        if value is not None:
            argv += [flag, ("true" if value else "false") if isinstance(value, bool) else str(value)]
    return argv


@dataclass(frozen=True)
class TrainOptions:
    """One training: which variant, on which ingested dataset, written where, and how."""

    model: str
    dataset: str
    out: Path
    run_id: str = "manual"
    epochs: int = 1
    steps_per_epoch: int | None = None  # None (or 0 on the command line): a full pass
    batch_size: int = 64  # per worker; the global batch is this times the workers
    learning_rate: float = 1e-3
    workers: int = 1  # local processes on 127.0.0.1 (all-reduce); a TFJob sets TF_CONFIG instead
    checkpoint_every: int | None = None  # steps between checkpoints; None: each epoch
    warm_start: str | None = None  # an exported model to start from, if the same variant
    sink: str | None = None  # an HTTP URL, or "stream": the Redis stream the selector reads
    round_size: int | None = None  # trainings the run started (told to the selector's round)
    seed: int = SEED  # Python's, NumPy's and TensorFlow's, and the shuffling's
    # TensorFlow's op determinism, one thread per op and an ordered input pipeline (slower):
    # the same training on the same machine gives the same weights (retrain reproduce)
    deterministic: bool = False

    def argv(self) -> list[str]:
        """The ``retrain`` arguments that run this training; defaults that need no flag
        (one worker, a full pass, the usual seed, no op determinism) are left out."""
        values: dict[str, object] = {name: getattr(self, name) for name, _ in FLAGS}
        if self.workers == 1:
            values["workers"] = None
        values["steps_per_epoch"] = self.steps_per_epoch or None
        values["seed"] = None if self.seed == SEED else self.seed
        values["deterministic"] = self.deterministic or None
        return train_argv(values)

    def local_command(self, entry: Sequence[str] | None = None) -> list[str]:
        """The whole command that runs this training in a child process on this machine
        (``entry``: how ``retrain`` is started, this Python's ``-m retrain.cli`` by default)."""
        return [*(entry or LOCAL_ENTRY), *self.argv()]

    def single_process(self) -> TrainOptions:
        """The same training as one of several worker processes runs it (no ``--workers``)."""
        return dataclasses.replace(self, workers=1)

    def problems(self, tf_config: str | None = None, runs_dir: Path | None = None) -> list[str]:
        """Everything wrong with these options, each naming its flag (empty when usable);
        given the project's ``runs_dir``, also a model sent to the selector from outside it."""
        found = []
        if self.model not in MODEL_TYPES:
            found.append(f"--model {self.model!r}: expected {', '.join(MODEL_TYPES[:-1])} or "
                         f"{MODEL_TYPES[-1]}")
        if not (Path(self.dataset) / "metadata.json").is_file():
            found.append(f"--dataset {self.dataset}: not an ingested dataset (no metadata.json)")
        for name, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--workers", self.workers, 1),
                                 ("--steps-per-epoch", self.steps_per_epoch, 0),
                                 ("--checkpoint-every", self.checkpoint_every, 1),
                                 ("--round-size", self.round_size, 1)):
            if value is not None and value < low:
                found.append(f"{name} {value}: must be at least {low}")
        if not 0 <= self.seed <= MAX_SEED:
            found.append(f"--seed {self.seed}: must be between 0 and {MAX_SEED}")
        if not 0 < self.learning_rate < 10:
            found.append(f"--learning-rate {self.learning_rate}: must be between 0 and 10")
        if self.sink is not None and self.sink != STREAM_SINK and not self.sink.startswith(
                ("http://", "https://")):
            found.append(f"--sink {self.sink}: expected an http(s) URL or {STREAM_SINK!r}")
        if self.workers > 1 and tf_config:
            found.append("--workers: TF_CONFIG already describes the cluster (as in a TFJob)")
        if self.sink is not None and runs_dir is not None and not in_runs_folder(self.out, runs_dir):
            found.append(f"--out {self.out}: outside the runs folder {runs_dir.resolve()}, so the "
                         "selector would refuse its model.trained (it judges only models this "
                         "project trained); write the model under the runs folder, or train "
                         "without --sink")
        return found

