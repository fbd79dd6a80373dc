"""The data gate through the real runner: real IDX and PNG data, real ingestion, the real
champion model (``trained_models.good``) judging the new labels.

The champion was trained on the ``ingested`` dataset (``write_dataset`` 1,200 + 300, seed 3);
each case here starts from the same base files, then pushes a corruption (or a clean
increment) as a user would: a PNG increment folder, or rewritten IDX files.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from dataset import idx
from dataset.layout import BASE_FILES, CLASS_NAMES
from dataset.seed import generate
from events import EventType
from events.payloads import RunParameters
from services.selector.champion import Champion, ChampionStore
from workflows.runner import LocalRunner, RunRequest

pytestmark = pytest.mark.integration

BASE_TRAIN, BASE_TEST = 1200, 300  # what the champion was trained on (the `ingested` fixture)


def _pngs(root: Path, batch: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder = root / "increments" / batch
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / CLASS_NAMES[int(label)] / f"{batch}-{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(target, compress_level=1)


@functools.lru_cache(maxsize=None)
def _generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = generate(n, seed)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _base(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The files the champion was trained on (``write_dataset``'s, drawn once per process)."""
    train, train_labels = _generated(BASE_TRAIN, 3)
    test, test_labels = _generated(BASE_TEST, 4)
    for split, (images, labels) in (("train", (train, train_labels)), ("test", (test, test_labels))):
        idx.write_images(root / BASE_FILES[split][0], images)
        idx.write_labels(root / BASE_FILES[split][1], labels)
    return train, train_labels, test, test_labels


def _rewrite_train(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    idx.write_images(root / BASE_FILES["train"][0], images)
    raw = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    (root / BASE_FILES["train"][1]).write_bytes(gzip.compress(raw))  # any label byte, as IDX allows


def _idx_increment(root: Path, batch: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder = root / "increments" / batch
    folder.mkdir(parents=True)
    idx.write_images(folder / f"{batch}-images-idx3-ubyte.gz", images)
    idx.write_labels(folder / f"{batch}-labels-idx1-ubyte.gz", labels)


def _fresh(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _generated(n, seed)


def relabelled(root: Path) -> None:  # every trouser of the push labelled as a bag
    images, labels = _fresh(1500, 101)
    _pngs(root, "push", images, np.where(labels == 1, 8, labels))


def shifted(root: Path) -> None:  # every label of the push shifted by one
    images, labels = _fresh(1000, 102)
    _pngs(root, "push", images, (labels + 1) % 10)


def class_missing(root: Path) -> None:
    train, labels, _, _ = _base(root)
    keep = labels != 3
    _rewrite_train(root, train[keep], labels[keep])


def unknown_label(root: Path) -> None:
    train, labels, _, _ = _base(root)
    labels = labels.copy()
    labels[::100] = 10  # 12 images labelled with a class that does not exist
    _rewrite_train(root, train, labels)


def class_times_five(root: Path) -> None:  # the split's dresses multiplied by five
    train, labels, _, _ = _base(root)
    images, drawn = _fresh(6000, 104)
    dresses = np.flatnonzero(drawn == 3)[:4 * int((labels == 3).sum())]
    _pngs(root, "push", images[dresses], drawn[dresses])


def inverted(root: Path) -> None:
    images, labels = _fresh(1000, 105)
    _pngs(root, "push", 255 - images, labels)


def blank(root: Path) -> None:
    _, labels = _fresh(1000, 106)
    _pngs(root, "push", np.zeros((1000, 28, 28), np.uint8), labels)


def noisy(root: Path) -> None:
    images, labels = _fresh(1000, 107)
    noise = np.random.default_rng(7).normal(0, 90, images.shape)
    _pngs(root, "push", np.clip(images + noise, 0, 255).astype(np.uint8), labels)


def copied_test_images(root: Path) -> None:  # 60 test images inside a clean 300-image push
    _, _, test, test_labels = _base(root)
    images, labels = _fresh(240, 109)
    _pngs(root, "push", np.concatenate([images, test[:60]]),
          np.concatenate([labels, test_labels[:60]]))


def inverted_appended(root: Path) -> None:  # the training file rewritten with 600 more images
    train, labels, _, _ = _base(root)
    images, added = _fresh(600, 111)
    _rewrite_train(root, np.concatenate([train, 255 - images]), np.concatenate([labels, added]))


def duplicated(root: Path) -> None:  # 30 % of the training split repeats another image
    train, labels, _, _ = _base(root)
    copies = np.random.default_rng(8).choice(BASE_TRAIN, 520)
    _pngs(root, "push", train[copies], labels[copies])


CORRUPTIONS = {
    "one class relabelled as another": (relabelled, "label_agreement"),
    "every label shifted by one": (shifted, "label_agreement"),
    "a class missing": (class_missing, "labels"),
    "an unknown label": (unknown_label, "labels"),
    "a class multiplied five times": (class_times_five, "class_balance"),
    "inverted images": (inverted, "pixel_drift"),
    "blank images": (blank, "pixel_drift"),
    "heavy noise": (noisy, "pixel_drift"),
    "test images copied into train": (copied_test_images, "leakage"),
    "30 % duplicates": (duplicated, "duplicates"),
    # the same corruptions, arriving another way
    "inverted images appended to the training file": (inverted_appended, "pixel_drift"),
}


@pytest.fixture
def served(settings, redis_handle, ingested, trained_models):
    """The champion: the good cnn, trained on the `ingested` base data."""
    model = trained_models.good
    ChampionStore(redis_handle.client, str(settings.model_repo.resolve())).replace(0, Champion(
        version=1, model_uri=model.model_uri, model_type="cnn", accuracy=model.val_accuracy,
        dataset_digest="base", dataset_uri=ingested, run_id="before", generation=1))
    return model


def _run(settings, redis_handle, root: Path, **params):
    emitted = []
    runner = LocalRunner(settings, redis_handle.client, redis_handle.url, emitted.append,
                         Console(quiet=True))
    summary = runner.run(RunRequest(str(root), RunParameters(**params)))
    return summary, emitted, runner


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_each_corruption_is_blocked_by_its_check_before_any_training(
        corruption, settings, redis_handle, served, standin_trainer, tmp_path):
    build, check = CORRUPTIONS[corruption]
    root = tmp_path / "data"
    _base(root)
    build(root)
    summary, emitted, _ = _run(settings, redis_handle, root, steps_per_epoch=1)

    assert summary["status"] == "blocked", summary.get("validation")
    checks = {c["name"]: c for c in summary["validation"]["checks"]}
    assert checks[check]["status"] == "block", checks
    assert check in summary["error"]
    assert summary["models"] == {} and not any(s["name"].startswith("train")
                                               for s in summary["steps"])
    rejected = [e for e in emitted if e.type is EventType.DATASET_REJECTED]
    assert len(rejected) == 1 and rejected[0].data.run_id == summary["run_id"]
    assert {c.name for c in rejected[0].data.checks if c.status == "block"} >= {check}
    assert not any(e.type is EventType.TRAINING_STARTED for e in emitted)


# 20 clean pushes of 300 to 3,000 images, drawn as the base data is, each on a generator
# seed of its own that the thresholds were not tuned on, pushed as a folder of PNGs or as IDX
# files by turns
CLEAN = [(300 + (2700 * i) // 19, 7001 + i) for i in range(20)]


@pytest.mark.parametrize("half", [0, 1])
def test_clean_increments_are_never_blocked(half, settings, redis_handle, served, tmp_path):
    base = tmp_path / "data"
    _base(base)
    for i in range(half, len(CLEAN), 2):
        n, seed = CLEAN[i]
        images, labels = generate(n, seed)
        root = tmp_path / f"push-{i}"
        shutil.copytree(base, root)
        write = _pngs if (i // 2) % 2 == 0 else _idx_increment
        write(root, f"push-{i}", images, labels)
        summary, _, _ = _run(settings, redis_handle, root, models=())
        report = summary["validation"]
        assert summary["status"] == "succeeded" and report["status"] != "blocked", (n, seed, report)
        assert report["reference"] is not None and not report["cached"]


def test_a_push_of_one_class_alone_is_an_honest_increment(settings, redis_handle, served,
                                                         tmp_path):
    """More shirts, the champion's weakest class: no class is missing from the split, and
    the split's shares move only as much as 60 shirts move 1,260 training images."""
    root = tmp_path / "data"
    _base(root)
    images, labels = _fresh(3000, 113)
    shirts = np.flatnonzero(labels == 6)[:60]
    _idx_increment(root, "shirts", images[shirts], labels[shirts])
    summary, _, _ = _run(settings, redis_handle, root, models=())
    assert summary["status"] == "succeeded", summary["validation"]
    checks = {c["name"]: c for c in summary["validation"]["checks"]}
    assert checks["labels"]["status"] == checks["class_balance"]["status"] == "pass"


def test_unchanged_data_passes_and_a_second_look_is_remembered(
        settings, redis_handle, served, tmp_path):
    root = tmp_path / "data"
    _base(root)
    first, _, _ = _run(settings, redis_handle, root, models=())
    again, _, _ = _run(settings, redis_handle, root, models=())
    assert first["validation"]["status"] == "pass", first["validation"]
    assert first["validation"]["cached"] is False and again["validation"]["cached"] is True
    assert again["validation"]["checks"] == first["validation"]["checks"]


def test_warn_trains_anyway_and_off_skips_the_checks(
        settings, redis_handle, served, standin_trainer, tmp_path):
    root = tmp_path / "data"
    _base(root)
    blank(root)
    warned, _, _ = _run(settings, redis_handle, root, models=("cnn",), steps_per_epoch=1,
                        validation="warn")
    assert warned["status"] == "succeeded" and warned["validation"]["status"] == "warn"
    assert warned["models"]["cnn"]["status"] == "trained"
    off, _, _ = _run(settings, redis_handle, root, models=(), validation="off")
    assert off["validation"]["status"] == "off" and off["validation"]["checks"] == []


def test_approve_resumes_a_blocked_run_and_keeps_who_approved_it(
        settings, redis_handle, served, standin_trainer, tmp_path):
    from workflows import record
    from workflows.runner import ApprovalError

    root = tmp_path / "data"
    _base(root)
    inverted(root)
    blocked, _, runner = _run(settings, redis_handle, root, models=("cnn",), steps_per_epoch=1)
    assert blocked["status"] == "blocked"

    resumed = runner.approve(blocked["run_id"], "ada")
    assert resumed["status"] == "succeeded", resumed
    assert resumed["models"]["cnn"]["status"] == "trained"
    kept = record.get(redis_handle.client, blocked["run_id"])
    assert kept["approval"]["by"] == "ada" and "pixel_drift" in kept["approval"]["overruled"]
    assert kept["validation"]["mode"] == "warn" and kept["validation"]["status"] == "warn"
    with pytest.raises(ApprovalError, match="succeeded, not blocked"):
        runner.approve(blocked["run_id"], "ada")


def test_a_cluster_approval_is_a_keyed_training_request_for_the_content_that_was_validated(
        settings, redis_handle, r, served, standin_trainer, tmp_path):
    """`retrain approve RUN --events-url`: a training.requested through the authenticated
    endpoint (a real server on 127.0.0.1); the run it starts trains on the approved content,
    with validation warn, and refuses content that changed since."""
    from typer.testing import CliRunner

    from core.http import BackgroundServer, bind
    from events.dedup import Deduplicator
    from retrain.cli import app
    from workflows.trigger import create_app

    root = tmp_path / "data"
    _base(root)
    blank(root)
    blocked, _, runner = _run(settings, redis_handle, root, models=("cnn",), steps_per_epoch=1)
    assert blocked["status"] == "blocked"

    received = []
    server = BackgroundServer(create_app(Deduplicator(r, 60, "trigger"), received.append,
                                         api_keys=("sekret",)),
                              bind("127.0.0.1", 0, "trigger"), "trigger").start()
    try:
        env = {"RETRAIN_HOME": str(settings.home), "RETRAIN_REDIS_URL": redis_handle.url,
               "RETRAIN_API_KEYS": "sekret"}
        url = server.url + "/events"
        result = CliRunner().invoke(app, ["approve", blocked["run_id"], "--by", "grace",
                                          "--events-url", url], env=env)
        assert result.exit_code == 0, result.output
        refused = CliRunner().invoke(app, ["approve", blocked["run_id"], "--events-url", url],
                                     env={**env, "RETRAIN_API_KEYS": "wrong"})
        assert refused.exit_code != 0 and len(received) == 1
    finally:
        server.stop()

    request = RunRequest.from_event(received[0])
    assert request.parameters.validation == "warn" and request.event["approved_by"] == "grace"
    resumed = runner.run(request)
    assert resumed["status"] == "succeeded" and resumed["validation"]["status"] == "warn"
    assert resumed["event"]["approves"] == blocked["run_id"]
    from workflows import record

    kept = record.get(r, blocked["run_id"])  # as on a cluster: approved, naming its successor
    assert kept["status"] == "approved" and kept["approval"]["by"] == "grace"
    assert kept["approval"]["resumed_as"] == resumed["run_id"]

    noisy(root)  # the data changes after the approval: the approved request trains nothing
    changed = runner.run(RunRequest.from_event(received[0]))
    assert changed["status"] == "failed" and "changed since run" in changed["error"]
    assert changed["models"] == {}


def test_labels_outside_the_classes_cannot_be_approved(
        settings, redis_handle, served, standin_trainer, tmp_path):
    from workflows.runner import ApprovalError

    root = tmp_path / "data"
    unknown_label(root)
    blocked, _, runner = _run(settings, redis_handle, root, models=("cnn",), steps_per_epoch=1,
                              validation="warn")
    assert blocked["status"] == "blocked" and "outside 0-9" in blocked["error"]
    with pytest.raises(ApprovalError, match="cannot be trained on"):
        runner.approve(blocked["run_id"], "ada")
    off, _, _ = _run(settings, redis_handle, root, models=("cnn",), validation="off")
    assert off["status"] == "blocked" and off["models"] == {}  # no checks, and still no training


def test_a_later_push_is_not_blocked_again_for_what_was_approved(
        settings, redis_handle, served, standin_trainer, tmp_path):
    root = tmp_path / "data"
    _base(root)
    inverted(root)
    blocked, _, runner = _run(settings, redis_handle, root, models=("cnn",), steps_per_epoch=1)
    assert runner.approve(blocked["run_id"], "ada")["status"] == "succeeded"
    images, labels = _fresh(300, 112)  # a clean push on top of the approved data
    _idx_increment(root, "later", images, labels)
    later, _, _ = _run(settings, redis_handle, root, models=())
    assert later["status"] == "succeeded", later["validation"]
    assert later["validation"]["status"] != "blocked"


def test_an_approval_that_loses_leaves_nothing_approved(r):
    """A run approved meanwhile (or never blocked): the approval is refused and its data is
    not counted as known by later validations."""
    from workflows import record, validate
    from workflows.blocked import keep_approval
    from workflows.runner import ApprovalError

    record.save(r, {"run_id": "run-1", "status": "approved", "dataset_uri": "/s/datasets/k"},
                time.time())
    with pytest.raises(ApprovalError, match="approved, not blocked"):
        keep_approval(r, record.get(r, "run-1"), "key:abc", "run-2")
    assert validate.approved_datasets(r) == []
