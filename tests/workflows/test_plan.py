"""The cluster run's first step: the event's whole parameters, checked with RunParameters, and
the Workflow's name derived from the event (a redelivery gets the same name)."""

import json
import re

import pytest
from typer.testing import CliRunner

from events.payloads import RunParameters
from retrain.cli import app
from workflows.definition import workflow_name
from workflows.plan import PlanError, plan_run

VOLUME = "/var/lib/retrain"
DATA = "/var/lib/retrain/data/fashion-mnist"


def test_every_run_parameter_reaches_the_steps():
    event = {"models": ["dropout", "cnn"], "epochs": 3, "steps_per_epoch": 40, "batch_size": 32,
             "learning_rate": 0.005, "workers": 4, "cache_policy": "max-age=30m",
             "train_cache": "max-age=2h", "force": True, "validation": "warn",
             "deterministic": True}
    plan = plan_run(json.dumps(event), DATA, VOLUME)
    assert plan.parameters == RunParameters(**event)
    assert plan.outputs() == {
        "trainings": json.dumps([{"model": "dropout", "warm-start": ""},
                                 {"model": "cnn", "warm-start": ""}]),
        "cache-policy": "max-age=30m", "epochs": "3", "steps-per-epoch": "40",
        "batch-size": "32", "learning-rate": "0.005", "workers": "4", "round-size": "2",
        "train-cache": "max-age=2h", "force": "true", "validation": "warn",
        "deterministic": "true"}


def test_the_data_gate_blocks_unless_the_event_says_otherwise():
    assert plan_run("{}", DATA, VOLUME).outputs()["validation"] == "block"
    with pytest.raises(PlanError, match="parameters.validation"):
        plan_run('{"validation": "skip"}', DATA, VOLUME)


def test_no_parameters_means_the_defaults():
    for text in ("{}", "", "null"):
        assert plan_run(text, DATA, VOLUME).parameters == RunParameters()


def test_warm_start_gives_the_champions_variant_its_model():
    champion = ("cnn", "/var/lib/retrain/models/fashion-mnist/3")
    plan = plan_run('{"warm_start": true}', DATA, VOLUME, lambda: champion)
    assert {t["model"]: t["warm-start"] for t in plan.trainings} == {
        "cnn": champion[1], "dropout": "", "batch_norm": ""}
    assert plan_run("{}", DATA, VOLUME, lambda: champion).trainings[0]["warm-start"] == ""


def test_every_problem_is_named_at_once():
    with pytest.raises(PlanError) as refused:
        plan_run('{"epochs": 0, "models": ["svm"], "cache_policy": "sometimes", "epoch": 3}',
                 "/etc/passwd", VOLUME)
    text = str(refused.value)
    for part in ("parameters.epochs", "parameters.models", "parameters.cache_policy",
                 "parameters.epoch", "outside the shared volume"):
        assert part in text
    assert refused.value.exit_code == 2


@pytest.mark.parametrize("uri", ["/var/lib/retrain/data/fashion-mnist",
                                 "file:///var/lib/retrain/git/0a1b2c/datasets/fm",
                                 "/var/lib/retrain/s3/9f8e7d/data"])
def test_the_watchers_folder_git_and_bucket_roots_are_accepted(uri):
    assert plan_run("{}", uri, VOLUME).parameters == RunParameters()


@pytest.mark.parametrize("uri", ["/var/lib/retrain/data/../../../etc", "/var/lib/retrain/.ssh",
                                 "data/fashion-mnist", "s3://bucket/x", "/var/lib/retrainx/data",
                                 "/var/lib/retrain"])
def test_a_data_uri_off_the_volume_is_refused(uri):
    with pytest.raises(PlanError):
        plan_run("{}", uri, VOLUME)


def test_the_plan_step_writes_its_outputs_and_refuses_bad_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    data = tmp_path / "data" / "fm"
    result = CliRunner().invoke(app, ["step", "plan", "--data", str(data), "--parameters",
                                      '{"models": ["cnn"], "epochs": 2}',
                                      "--outputs", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "trainings").read_text()) == [
        {"model": "cnn", "warm-start": ""}]
    assert (tmp_path / "out" / "epochs").read_text() == "2"
    refused = CliRunner().invoke(app, ["step", "plan", "--data", str(data),
                                       "--parameters", '{"epochs": "many"}'])
    assert refused.exit_code != 0 and isinstance(refused.exception, PlanError)
    both = CliRunner().invoke(app, ["step", "plan", "--data", "/etc", "--parameters",
                                    '{"epochs": 0, "warm_start": true}'])
    assert [p.split(":")[0] for p in both.exception.problems] == [
        "parameters.epochs", "data URI '/etc' is outside the shared volume " + str(tmp_path)]


def test_a_redelivered_event_names_the_same_workflow_and_another_event_another():
    name = workflow_name("retrain/watcher", "fashion-mnist@164b8b37")
    assert name == workflow_name("retrain/watcher", "fashion-mnist@164b8b37")
    assert re.fullmatch(r"retrain-[0-9a-f]{20}", name)  # a valid Kubernetes name
    assert name != workflow_name("retrain/watcher", "fashion-mnist@164b8b38")
    assert name != workflow_name("retrain/cli", "fashion-mnist@164b8b37")
