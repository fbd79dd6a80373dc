"""The model repository's layout, as KServe and TF Serving read it: ``<repo>/<name>/<n>/`` is
version ``n`` of model ``name``, a SavedModel folder; a model exported by retrain also carries
what it is (``INFO_FILE``) and the Keras weights a warm start loads (``WEIGHTS_FILE``) under
``assets.extra``, which the servers ignore."""

from __future__ import annotations

from pathlib import Path

INFO_FILE = "assets.extra/retrain.json"
WEIGHTS_FILE = "assets.extra/weights.h5"
# the signatures every exported model serves, which the selector scores and the server calls
BYTES_SIGNATURE = "serving_default"  # encoded images (PNG, JPEG, ...) -> probabilities
ARRAYS_SIGNATURE = "predict_images"  # 28x28 float32 pixels in [0, 255] -> probabilities
OUTPUT = "probabilities"  # the one output of both: a softmax over the ten classes


def versions(model_dir: Path) -> list[int]:
    """The version numbers published under ``model_dir`` (``<repo>/<name>``), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    return (versions(model_dir) or [0])[-1] + 1


def in_runs_folder(model: Path, runs_dir: Path) -> bool:
    """Whether a model folder lies below ``runs_dir`` (links followed): the only models the
    selector judges are the ones this project's trainings wrote there."""
    runs = runs_dir.resolve()
    resolved = model.resolve()
    return resolved != runs and resolved.is_relative_to(runs)
