"""The training cache: a training runs once per content key, as an ingestion does.

The key is everything the trained weights depend on: the ingested dataset's content digest
(and the ingestion code that made its shards), the variant, every parameter that changes the
result (epochs, steps per epoch, batch size, learning rate, workers, seed, op determinism),
the warm-start model's digest, and the training code's own version (a hash of the modules
that define the models and the training loop, and the TensorFlow and tf_keras versions). The run id, the
output folder and the time are not in it. The entry says where the model is, the digest of
its files (checked before a hit is trusted) and what the training measured.

No TensorFlow here: the check runs in the runner and in a small cluster step.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from blake3 import blake3

from core.cache_policy import Policy
from core.content_cache import ContentCache
from core.durations import ago
from repository.digest import model_digest, model_signature, wait_settled
from services.trainer.options import TrainOptions

PREFIX = "retrain:train-cache:"
CODE = "train-v1"  # bump by hand for a change the hashed modules below do not show
# every module the learning's result depends on, wherever it lives (the test of this module
# follows their imports and checks that each one that can change the weights or the exported
# files is here)
_CODE_MODULES = ("services.trainer.train", "services.trainer.models", "services.trainer.data",
                 "services.trainer.export", "services.trainer.spec", "services.trainer.options",
                 "services.trainer.cluster", "services.trainer.callbacks",
                 "services.trainer.phases", "dataset.example", "dataset.tfrecord",
                 "dataset.idx", "dataset.image_header", "repository.layout")
_ROOT = Path(__file__).resolve().parents[2]
_LIBRARIES = ("tensorflow", "tf_keras")


def module_path(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")).with_suffix(".py")


@functools.cache
def code_version() -> str:
    """``train-v1+<hash>`` of the training modules' source and the TensorFlow versions."""
    hasher = blake3()
    for name in _CODE_MODULES:
        hasher.update(name.encode() + b"\0" + module_path(name).read_bytes())
    for library in _LIBRARIES:
        try:
            hasher.update(f"{library}=={metadata.version(library)}\0".encode())
        except metadata.PackageNotFoundError:
            hasher.update(f"{library} absent\0".encode())
    return f"{CODE}+{hasher.hexdigest()[:12]}"


@dataclass(frozen=True)
class TrainingEntry:
    key: str
    model_type: str
    model_uri: str
    model_digest: str  # of the model folder's files, checked on every hit
    weights_digest: str  # of the trained weights' values (the trainer's)
    dataset_digest: str
    dataset_uri: str
    val_accuracy: float
    val_loss: float
    steps: int
    workers: int
    trained_seconds: float
    run_id: str  # the run that trained it
    parts: dict[str, Any]
    created_at: float
    last_hit: float
    hits: int
    fence: int
    files: dict[str, list[int]] = field(default_factory=dict)  # model_signature when recorded

    @property
    def group(self) -> str:
        return self.model_type

    def result(self) -> dict[str, Any]:
        """The recorded training's outcome, as its ``result.json`` said it."""
        return {"model_uri": self.model_uri, "digest": self.dataset_digest,
                "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
                "seconds": self.trained_seconds, "workers": self.workers, "steps": self.steps,
                "weights_digest": self.weights_digest, "seed": self.parts.get("seed"),
                "deterministic": bool(self.parts.get("deterministic"))}


def training_cache(client: redis.Redis, ttl_seconds: int) -> ContentCache:
    return ContentCache(client, ttl_seconds, prefix=PREFIX, entry=TrainingEntry)


def key_parts(options: TrainOptions, dataset_meta: dict[str, Any],
              warm_start_digest: str | None) -> dict[str, Any]:
    """Pure: what the weights ``options`` would train depend on."""
    return {"dataset_digest": dataset_meta["digest"],
            "ingestion": dataset_meta.get("code_version"), "model": options.model,
            "epochs": options.epochs, "steps_per_epoch": options.steps_per_epoch or None,
            "batch_size": options.batch_size, "learning_rate": options.learning_rate,
            "workers": options.workers, "seed": options.seed,
            "deterministic": options.deterministic, "warm_start": warm_start_digest,
            "code": code_version()}


def training_key(parts: dict[str, Any]) -> str:
    return blake3(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TrainingDecision:
    hit: bool
    reason: str
    entry: TrainingEntry | None = None


def verify_model(entry: TrainingEntry) -> str | None:
    """Why the cached model cannot be reused, or None when its files are as recorded: each
    file's size and stat signature as when the model was recorded (then no byte can have
    been written since), or else their digest."""
    folder = Path(entry.model_uri)
    if not (folder / "saved_model.pb").is_file():
        return f"model {entry.model_uri} is gone (no saved_model.pb)"
    try:
        if entry.files and model_signature(folder) == entry.files:
            return None
        found = model_digest(folder)
    except OSError as exc:
        return f"model {entry.model_uri} cannot be read ({type(exc).__name__})"
    if found != entry.model_digest:
        return (f"model {entry.model_uri} was altered (files digest {found[:8]}…, recorded "
                f"{entry.model_digest[:8]}…)")
    return None


def decide(policy: Policy, force: bool, parts: dict[str, Any], exact: TrainingEntry | None,
           latest: TrainingEntry | None, now: float) -> TrainingDecision:
    """Pure apart from verifying ``exact``'s model: may this training be skipped, and why."""
    model, digest = parts["model"], str(parts["dataset_digest"])[:8]
    if force:
        return TrainingDecision(False, "miss: forced (every model is trained again)")
    if policy.kind == "off":
        return TrainingDecision(False, "miss: the training cache is off for this run")
    if exact is not None:
        age = now - exact.created_at
        if policy.kind == "max-age" and age > (policy.max_age or 0):
            return TrainingDecision(False, f"miss: the {model} trained {ago(age)} is older "
                                           f"than {policy}")
        problem = verify_model(exact)
        if problem:
            return TrainingDecision(False, f"miss: {problem}")
        return TrainingDecision(True, f"hit: {model} trained on digest {digest}… with the same "
                                      f"parameters {ago(age)}", exact)
    changed = {name: [value, parts[name]] for name, value in (latest.parts if latest else {}).items()
               if parts.get(name) != value}
    if changed:
        what = ", ".join(f"{name} {_short(before)} → {_short(now_)}"
                         for name, (before, now_) in changed.items())
        return TrainingDecision(False, f"miss: {what} since the last {model} training")
    return TrainingDecision(False, f"miss: no {model} trained on digest {digest}… with these "
                                   "parameters in the cache")


def _short(value: object) -> str:
    text = "none" if value is None else str(value)
    return text[:8] + "…" if len(text) > 24 else text


def new_entry(key: str, parts: dict[str, Any], result: dict[str, Any], run_id: str,
              dataset_uri: str, fence: int) -> TrainingEntry:
    """The entry of a training that just ended with ``result`` (its ``result.json``)."""
    now = time.time()
    wait_settled(result["model_uri"])
    return TrainingEntry(
        key=key, model_type=parts["model"], model_uri=result["model_uri"],
        files=model_signature(result["model_uri"]),
        model_digest=model_digest(result["model_uri"]), weights_digest=result["weights_digest"],
        dataset_digest=result["digest"], dataset_uri=dataset_uri,
        val_accuracy=result["val_accuracy"], val_loss=result["val_loss"], steps=result["steps"],
        workers=result["workers"], trained_seconds=round(result["seconds"], 3), run_id=run_id,
        parts=parts, created_at=now, last_hit=now, hits=0, fence=fence)
