"""``retrain reproduce VERSION [--json]``: train the model behind a served version again, from
its recorded lineage (``workflows.lineage``: the dataset, the variant, the parameters, the
seed, whether it ran with op determinism, the code version), and compare the two on the
pinned evaluation set.

The training is new (the training cache is not asked) and runs as the runner runs one, with
``retrain train`` in a child process, into a temporary folder that is removed afterwards: it
is never judged, promoted or copied into the model repository. The comparison scores both
models on the pinned set's test split (``services.selector.evaluate``'s ``predictor`` and
``score_of``, the selector's own prediction and scoring): each one's accuracy and the difference, the share of images both
put in the same class, and the largest difference of any class probability. A reproduction
``matches`` when the original ran with op determinism and the two agree on every image,
their probabilities within ``TOLERANCE``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.errors import RetrainError
from retrain.commands.support import load_settings

if TYPE_CHECKING:
    import numpy as np

    from core.settings import Settings
    from services.trainer.options import TrainOptions

TOLERANCE = 1e-5  # of a class probability: what float noise may move and nothing else
TRAINING = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "workers")


class ReproduceError(RetrainError):
    """The version cannot be trained again, or its training failed; the message says why."""


class DatasetGoneError(ReproduceError):
    """The version's dataset is no longer in the store (exit 2: restore it first)."""

    exit_code = 2


@dataclass(frozen=True)
class Plan:
    """What the lineage says the served model was trained from, and how."""

    version: int
    model_type: str
    served_model: str  # the served version's own folder
    dataset_uri: str
    dataset_digest: str
    parameters: dict[str, Any]  # TRAINING's, as the run trained
    seed: int
    deterministic: bool
    warm_start: str | None
    code_version: str | None
    notes: tuple[str, ...]  # what may keep the reproduction from matching


def plan(found: dict[str, Any], code_now: str) -> Plan:
    """Pure: the training a version's lineage (``workflows.lineage.lineage``) describes.
    Raises ``DatasetGoneError`` when its dataset has left the store and ``ReproduceError``
    when the lineage lacks what a training needs."""
    from services.trainer.options import SEED

    model, dataset = found.get("model") or {}, found.get("dataset") or {}
    training, run = found.get("training") or {}, found.get("run") or {}
    version = found.get("version")
    if version is None or not model.get("variant"):
        raise ReproduceError(f"{version}: no served model is recorded to reproduce")
    if not model.get("present"):
        raise ReproduceError(f"version {version}'s model is gone from {model.get('location')}: "
                             "nothing to compare a reproduction with")
    if not dataset.get("uri") or not dataset.get("present"):
        raise DatasetGoneError(
            f"version {version}'s dataset (digest {str(dataset.get('digest'))[:16]}…) is gone "
            f"from the store ({dataset.get('uri') or 'no location recorded'}): ingest the same "
            "data again (retrain ingest --data DIR; the same files give the same digest) and "
            f"run retrain reproduce {version} again")
    info = model.get("info") or {}
    recorded = {**(run.get("parameters") or {}), **(training.get("parameters") or {})}
    notes = []
    seed = recorded.get("seed", info.get("seed"))
    if seed is None:
        notes.append(f"the seed was not recorded: {SEED}, every training's seed then, is used")
    deterministic = bool(info.get("deterministic", recorded.get("deterministic", False)))
    if not deterministic:
        notes.append("the original was not trained with op determinism (run parameter "
                     "deterministic): a reproduction cannot be expected to match it")
    code = training.get("code_version")
    if code and code != code_now:
        notes.append(f"trained by code {code}, this is {code_now}: the code changed since")
    warm = (training.get("warm_start") or {}).get("from")
    if warm and not Path(warm).is_dir():
        notes.append(f"warm-started from {warm}, which is gone: trained from scratch instead")
        warm = None
    return Plan(int(version), str(model["variant"]), str(model["location"]), str(dataset["uri"]),
                str(dataset.get("digest")), {k: recorded.get(k) for k in TRAINING},
                int(SEED if seed is None else seed), deterministic, warm, code, tuple(notes))


def options_for(found: Plan, out: Path) -> TrainOptions:
    from services.trainer.options import TrainOptions

    p = found.parameters
    return TrainOptions(model=found.model_type, dataset=found.dataset_uri, out=out,
                        run_id=f"reproduce-{found.version}", epochs=int(p["epochs"] or 1),
                        steps_per_epoch=p["steps_per_epoch"] or None,
                        batch_size=int(p["batch_size"] or 64),
                        learning_rate=float(p["learning_rate"] or 1e-3),
                        workers=int(p["workers"] or 1), warm_start=found.warm_start,
                        seed=found.seed, deterministic=found.deterministic)


def compare(served: np.ndarray, reproduced: np.ndarray, labels: np.ndarray,
            deterministic: bool) -> dict[str, Any]:
    """Pure: two models' probabilities on the same images, compared."""
    import numpy as np

    from services.selector.evaluate import score_of

    first, second = served.argmax(axis=1), reproduced.argmax(axis=1)
    accuracy = (score_of(first, labels).accuracy, score_of(second, labels).accuracy)
    agreement = float(np.mean(first == second)) if labels.size else 1.0
    largest = float(np.max(np.abs(served - reproduced))) if labels.size else 0.0
    return {"images": int(labels.size), "served_accuracy": accuracy[0],
            "reproduced_accuracy": accuracy[1], "accuracy_difference": accuracy[1] - accuracy[0],
            "agreement": agreement, "max_probability_difference": largest,
            "matches": deterministic and accuracy[0] == accuracy[1] and agreement == 1.0
            and largest <= TOLERANCE}


def train_again(settings: Settings, options: TrainOptions) -> tuple[float, dict[str, Any]]:
    """The training, as the local runner starts one (``retrain train`` in a child process,
    the settings' train command), reporting nowhere: (seconds, what it printed)."""
    environment = {k: v for k, v in os.environ.items() if k != "RETRAIN_REDIS_URL"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    options.out.parent.mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run(options.local_command(settings.train_command or None), text=True,
                          capture_output=True, env=environment, check=False)
    seconds = round(time.perf_counter() - started, 3)
    (options.out.parent / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ReproduceError(f"the training exited with code {done.returncode}: {tail}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def reproduce(
    version: Annotated[str, typer.Argument(help="a served version (7)")],
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
) -> None:
    """Train the model behind a served version again from its lineage (its dataset,
    parameters, seed, op determinism; never from the training cache, never promoted) and
    compare the two on the pinned evaluation set."""
    from core.redis_store import open_redis
    from services.trainer.training_cache import code_version
    from workflows.lineage import lineage

    if not version.strip().isdigit():
        raise typer.BadParameter(f"{version!r}: a served version is a number")
    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        found = plan(lineage(handle.client, str(settings.model_repo.resolve()), version),
                     code_version())
    report = _reproduced(settings, found)
    print(json.dumps(report, indent=1) if as_json else "\n".join(render(report)))


def _reproduced(settings: Settings, found: Plan) -> dict[str, Any]:
    from core.tf_start import configure
    from dataset import pinned as pinning

    pinned = pinning.current(pinning.store_of(found.dataset_uri))
    evaluation_uri = pinned.dataset_uri if pinned else found.dataset_uri
    with tempfile.TemporaryDirectory(prefix="retrain-reproduce-") as folder:
        options = options_for(found, Path(folder) / found.model_type / "model")
        seconds, trained = train_again(settings, options)
        configure()
        from dataset.records import test_arrays
        from services.selector.evaluate import predictor

        images, labels = test_arrays(evaluation_uri)
        images = images[..., 0]  # [n, 28, 28], as the array signature takes them
        compared = compare(predictor(found.served_model)(images),
                           predictor(str(options.out))(images), labels.numpy(),
                           found.deterministic)
    return {"version": found.version, "model_type": found.model_type,
            "dataset": {"digest": found.dataset_digest, "uri": found.dataset_uri},
            "parameters": found.parameters, "seed": found.seed,
            "deterministic": found.deterministic,
            "code_version": {"original": found.code_version, "now": _code_now()},
            "training": {"new": True, "cached": False, "seconds": seconds,
                         "val_accuracy": trained.get("val_accuracy")},
            "evaluation": {"set": "pinned" if pinned else "the version's own test split",
                           "dataset_digest": pinned.digest if pinned else found.dataset_digest,
                           **{k: v for k, v in compared.items() if k != "matches"}},
            "matches": compared["matches"], "notes": list(found.notes)}


def _code_now() -> str:
    from services.trainer.training_cache import code_version

    return code_version()


def render(report: dict[str, Any]) -> list[str]:
    """The report as a person reads it."""
    e, t = report["evaluation"], report["training"]
    verdict = "MATCHES" if report["matches"] else "DIFFERS"
    lines = [f"version {report['version']} · {report['model_type']} · reproduction {verdict}",
             (f"training   a new training ran ({t['seconds']:.1f} s; the training cache was "
              f"not asked), seed {report['seed']}, "
              + ("op determinism" if report["deterministic"] else "without op determinism")),
             (f"dataset    digest {str(report['dataset']['digest'])[:16]}… at "
              f"{report['dataset']['uri']}"),
             (f"evaluated  on {e['set']} ({e['images']} images, digest "
              f"{str(e['dataset_digest'])[:16]}…)"),
             (f"accuracy   served {e['served_accuracy']:.4f} · reproduced "
              f"{e['reproduced_accuracy']:.4f} · difference {e['accuracy_difference']:+.4f}"),
             (f"agreement  {e['agreement']:.2%} of the predictions · largest probability "
              f"difference {e['max_probability_difference']:.2e}")]
    return lines + [f"note       {n}" for n in report["notes"]]
