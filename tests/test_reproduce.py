"""``retrain reproduce``: a version trained with op determinism by the real runner and the
real trainer, promoted by the real selector, trained again from its lineage and compared on
the pinned evaluation set."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from rich.console import Console

from core.settings import MODEL_NAME, Settings
from events import EventType
from events.payloads import RunParameters
from retrain.commands.reproduce import plan
from services.selector.backends import LocalBackend
from services.selector.main import build_selector
from services.trainer.training_cache import code_version
from tests.conftest import write_dataset
from workflows.lineage import lineage
from workflows.runner import LocalRunner, RunRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.real_training]
PARAMETERS = RunParameters(models=("cnn",), steps_per_epoch=3, batch_size=32,
                           validation="warn", deterministic=True)


@pytest.fixture(scope="module")
def served(redis_handle, tmp_path_factory):
    """Version 1: a cnn trained deterministic on 400 images (3 steps), served."""
    redis_handle.client.flushdb()
    tmp = tmp_path_factory.mktemp("reproduce")
    # the real trainer, whatever test trainer an earlier test of this process put in the
    # environment (a module's fixture runs before a test's own environment is set)
    settings = Settings(home=tmp / "home", redis_url=redis_handle.url, offline=True,
                        train_command=(), _env_file=None)
    selector = build_selector(settings, redis_handle.client, lambda e: None,
                              LocalBackend(settings.model_repo, MODEL_NAME))

    def emit(event):
        if event.type in (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED):
            selector.handle(event)

    data = write_dataset(tmp / "data", train=400, test=100)
    runner = LocalRunner(settings, redis_handle.client, redis_handle.url, emit,
                         Console(quiet=True))
    summary = runner.run(RunRequest(str(data), PARAMETERS))
    assert summary["status"] == "succeeded", summary
    return settings, summary


def _reproduce(settings, redis_handle, *args):
    env = {**{k: v for k, v in os.environ.items() if k != "RETRAIN_TRAIN_COMMAND"},
           "RETRAIN_HOME": str(settings.home), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "retrain.cli", "reproduce", *args],
                          capture_output=True, text=True, timeout=300, env=env, check=False)


def test_a_deterministic_training_reproduced_on_the_same_machine_matches(served, redis_handle):
    settings, summary = served
    done = _reproduce(settings, redis_handle, "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["matches"] is True, json.dumps(  # every figure, when it does not match
        {k: report.get(k) for k in ("evaluation", "notes", "training", "seed", "deterministic")})
    assert report["training"]["new"] and not report["training"]["cached"]
    assert report["training"]["seconds"] > 0
    assert report["deterministic"] and report["seed"] == 7 and report["notes"] == []
    e = report["evaluation"]
    assert e["set"] == "pinned" and e["images"] == 100
    assert e["agreement"] == 1.0 and e["accuracy_difference"] == 0.0
    assert e["max_probability_difference"] <= 1e-5
    assert report["dataset"]["digest"] == summary["digest"]
    runs = list(settings.runs_dir.iterdir())  # nothing of the reproduction was kept or served
    assert [r.name for r in runs] == [summary["run_id"]]
    assert sorted(p.name for p in (settings.model_repo / MODEL_NAME).iterdir()) == ["1"]


def test_a_version_trained_without_op_determinism_is_said_so(served, redis_handle):
    settings, _ = served
    found = lineage(redis_handle.client, str(settings.model_repo.resolve()), 1)
    found["model"]["info"]["deterministic"] = False
    said = plan(found, code_version())
    assert not said.deterministic
    assert any("not trained with op determinism" in note for note in said.notes)


def test_a_version_whose_dataset_is_gone_says_what_to_do(served, redis_handle, tmp_path):
    settings, summary = served
    dataset = summary["dataset_uri"]
    shutil.move(dataset, tmp_path / "away")
    try:
        done = _reproduce(settings, redis_handle, "1")
    finally:
        shutil.move(tmp_path / "away", dataset)
    assert done.returncode == 2
    assert "is gone from the store" in done.stderr and "retrain ingest --data" in done.stderr
