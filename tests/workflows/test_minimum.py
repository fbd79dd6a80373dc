"""Small changes wait: a run whose data changes fewer images (new or removed) than
RETRAIN_MIN_CHANGE ends ``deferred`` after validation, saying why; the changes add up and the
first run past the minimum trains; a person's run (a manual event, --force) trains
regardless; with no champion nothing waits; a minimum that cannot be parsed is refused as
the settings load. Real Redis, real data, the champion's dataset as the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console

from core.errors import ConfigurationError
from core.settings import Settings
from dataset import idx
from dataset.layout import BASE_FILES
from dataset.seed import generate
from events.payloads import RunParameters
from services.selector.champion import Champion, ChampionStore
from tests.conftest import write_dataset
from workflows import record
from workflows.minimum import MinChange, deferral
from workflows.runner import LocalRunner, RunRequest

pytestmark = pytest.mark.integration


def test_the_minimum_is_a_count_or_a_share_of_the_champions_training_set():
    assert deferral(MinChange.parse("600"), 120, 60000, manual=False) == (
        "deferred: 120 new images < 600")
    assert deferral(MinChange.parse("1%"), 120, 60000, manual=False) == (
        "deferred: 120 new images < 600 (1% of the champion's 60000 training images)")
    assert deferral(MinChange.parse("600"), 600, 60000, manual=False) is None
    assert deferral(MinChange.parse("600"), 120, 60000, manual=True) is None
    assert deferral(MinChange.parse("600"), 120, None, manual=False) is None  # no champion
    assert deferral(MinChange.parse("0"), 0, 60000, manual=False) is None
    with pytest.raises(ValueError, match="min_change '6 images'"):
        MinChange.parse("6 images")


def test_removed_images_count_toward_the_minimum_and_are_named():
    assert deferral(MinChange.parse("600"), 100, 60000, manual=False, removed_images=20) == (
        "deferred: 120 changed images (100 new, 20 removed) < 600")
    assert deferral(MinChange.parse("600"), 0, 60000, manual=False, removed_images=600) is None
    assert deferral(MinChange.parse("1%"), 0, 60000, manual=False, removed_images=20) == (
        "deferred: 20 changed images (0 new, 20 removed) < 600 (1% of the champion's 60000 "
        "training images)")


@pytest.mark.parametrize("value", ["150%", "-1", "1e3", "nan%", "6 images", "%"])
def test_a_minimum_that_cannot_be_parsed_is_refused_as_the_settings_load(value, monkeypatch):
    with pytest.raises(ValidationError, match="min_change"):
        Settings(min_change=value)
    from retrain.commands.support import load_settings

    monkeypatch.setenv("RETRAIN_MIN_CHANGE", value)  # what every command and step loads
    with pytest.raises(ConfigurationError, match="RETRAIN_MIN_CHANGE: .*expected a count"):
        load_settings()


def test_a_good_minimum_loads_as_the_runs_read_it():
    assert Settings(min_change=" 1.0% ").min_change == "1%"
    assert MinChange.parse(Settings(min_change="0.5%").min_change) == MinChange(share=0.005)
    assert Settings(min_change="600").min_change == "600"


def _increment(root: Path, batch: str, n: int, seed: int) -> None:
    images, labels = generate(n, seed)
    folder = root / "increments" / batch
    folder.mkdir(parents=True)
    idx.write_images(folder / f"{batch}-images-idx3-ubyte.gz", images)
    idx.write_labels(folder / f"{batch}-labels-idx1-ubyte.gz", labels)


@pytest.fixture
def champion(settings, redis_handle, ingested, trained_models):
    model = trained_models.good
    ChampionStore(redis_handle.client, str(settings.model_repo.resolve())).replace(0, Champion(
        version=1, model_uri=model.model_uri, model_type="cnn", accuracy=model.val_accuracy,
        dataset_digest="base", dataset_uri=ingested, run_id="before", generation=1))
    return model


def _runner(settings, redis_handle, min_change: str) -> LocalRunner:
    return LocalRunner(settings.model_copy(update={"min_change": min_change}), redis_handle.client,
                       redis_handle.url, lambda e: None, Console(quiet=True))


PARAMS = {"models": ("cnn",), "steps_per_epoch": 1, "validation": "off"}


def test_small_increments_defer_and_add_up_and_the_first_past_the_minimum_trains(
        settings, redis_handle, champion, standin_trainer, tmp_path):
    runner = _runner(settings, redis_handle, "500")
    root = write_dataset(tmp_path / "data", train=1200, test=300)  # the champion's data
    said = []
    for batch, seed in (("b1", 501), ("b2", 502), ("b3", 503)):
        _increment(root, batch, 200, seed)
        said.append(runner.run(RunRequest(str(root), RunParameters(**PARAMS),
                                          "dataset.updated/watcher")))
    first, second, third = said
    assert first["status"] == "deferred" and first["reason"] == "deferred: 200 new images < 500"
    assert first["error"] == first["reason"] and first["models"] == {}
    assert second["status"] == "deferred"
    assert second["reason"] == "deferred: 400 new images < 500"  # the changes add up
    assert third["status"] == "succeeded" and third["models"]["cnn"]["status"] == "trained"
    assert record.get(redis_handle.client, first["run_id"])["status"] == "deferred"


def test_a_checked_run_defers_on_the_gates_own_count(settings, redis_handle, champion,
                                                     standin_trainer, tmp_path):
    root = write_dataset(tmp_path / "data", train=1200, test=300)
    _increment(root, "b1", 120, 601)
    summary = _runner(settings, redis_handle, "600").run(RunRequest(
        str(root), RunParameters(models=("cnn",), steps_per_epoch=1, validation="warn"),
        "dataset.updated/watcher"))
    assert summary["status"] == "deferred", summary.get("validation")
    assert summary["reason"] == "deferred: 120 new images < 600"
    assert summary["validation"]["new_images"] == 120


@pytest.mark.parametrize("validation", ["off", "warn"])
def test_a_push_that_only_removes_images_counts_them(validation, settings, redis_handle,
                                                     champion, standin_trainer, tmp_path):
    """Deleting bad data is a change: 100 of the champion's training images removed, nothing
    added, trains past a minimum of 90 and waits, saying so, under 500."""
    root = write_dataset(tmp_path / "data", train=1200, test=300)  # the champion's data
    images, labels = generate(1200, 3)
    idx.write_images(root / BASE_FILES["train"][0], images[100:])
    idx.write_labels(root / BASE_FILES["train"][1], labels[100:])
    params = RunParameters(models=("cnn",), steps_per_epoch=1, validation=validation)
    waits = _runner(settings, redis_handle, "500").run(RunRequest(str(root), params,
                                                                  "dataset.updated/watcher"))
    assert waits["status"] == "deferred", waits.get("validation")
    assert waits["reason"] == "deferred: 100 changed images (0 new, 100 removed) < 500"
    assert waits["validation"]["removed_images"] == 100
    trains = _runner(settings, redis_handle, "90").run(RunRequest(str(root), params,
                                                                  "dataset.updated/watcher"))
    assert trains["status"] == "succeeded", trains.get("error")


@pytest.mark.parametrize("how", ["force", "manual event", "training.requested"])
def test_a_person_s_run_trains_whatever_its_size(how, settings, redis_handle, champion,
                                                  standin_trainer, tmp_path):
    root = write_dataset(tmp_path / "data", train=1200, test=300)
    _increment(root, "b1", 50, 701)
    params = RunParameters(**PARAMS, force=how == "force")
    trigger = {"force": "dataset.updated/watcher", "manual event": "dataset.updated/manual",
               "training.requested": "training.requested"}[how]
    summary = _runner(settings, redis_handle, "500").run(RunRequest(str(root), params, trigger))
    assert summary["status"] == "succeeded", summary.get("error")


def test_with_no_champion_nothing_waits(settings, redis_handle, standin_trainer, tmp_path):
    root = write_dataset(tmp_path / "data", train=600, test=200)
    summary = _runner(settings, redis_handle, "100000").run(RunRequest(
        str(root), RunParameters(**PARAMS), "dataset.updated/watcher"))
    assert summary["status"] == "succeeded"


def test_retrain_run_prints_why_a_run_was_deferred_and_exits_0():
    import typer

    from retrain.commands.pipeline import exit_for
    from retrain.report import print_run

    console = Console(record=True, width=200)
    print_run(console, {"run_id": "run-1", "status": "deferred", "seconds": 1.0, "steps": [],
                        "reason": "deferred: 30 new images < 500",
                        "error": "deferred: 30 new images < 500"})
    assert "deferred: 30 new images < 500: nothing trained" in console.export_text()
    exit_for("deferred")  # no failure: exit 0
    with pytest.raises(typer.Exit):
        exit_for("failed")
