"""One definition of a training's command line: the local runner, ``retrain train`` (and its
multi-worker launcher) and the hera definition's TFJob all agree on it."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from events.payloads import RunParameters
from retrain.cli import app
from services.trainer.options import FLAGS, TrainOptions, train_argv
from workflows.definition import ClusterNames, tfjob_manifest
from workflows.fanout import Trainings
from workflows.runner import RunRequest


@pytest.fixture
def parsed(monkeypatch):
    """What the real ``retrain train`` command line makes of an argv (training itself is
    replaced by a recorder: this is about parsing, not TensorFlow)."""
    seen = []

    def record(settings, options):
        seen.append(options)
        return {"recorded": True}

    monkeypatch.setattr("services.trainer.main.run", record)

    def parse(argv):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"recorded": True}
        return seen.pop()

    return parse


def test_every_flag_is_an_option_of_retrain_train():
    import typer.main

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in param.opts}
    assert {flag for _, flag in FLAGS} <= options
    assert {name for name, _ in FLAGS} == set(TrainOptions.__dataclass_fields__)


def test_the_runners_training_is_what_retrain_train_parses(parsed, tmp_path):
    request = RunRequest(str(tmp_path), RunParameters(epochs=3, steps_per_epoch=7, batch_size=16,
                                                      learning_rate=0.01, workers=2),
                         run_id="run-42")
    options = Trainings.options(request.run_id, request.parameters, "dropout",
                                "/store/datasets/k", tmp_path / "m",
                                warm_start="/models/fashion-mnist/3")
    assert options == TrainOptions(model="dropout", dataset="/store/datasets/k", out=tmp_path / "m",
                                   run_id="run-42", epochs=3, steps_per_epoch=7, batch_size=16,
                                   learning_rate=0.01, workers=2,
                                   warm_start="/models/fashion-mnist/3")
    command = options.local_command()
    assert command[1:4] == ["-P", "-m", "retrain.cli"] and command[4:] == options.argv()
    assert parsed(options.argv()) == options


def test_a_full_pass_and_one_worker_need_no_flag(parsed, tmp_path):
    request = RunRequest(str(tmp_path), RunParameters(steps_per_epoch=None, workers=1), run_id="r")
    options = Trainings.options(request.run_id, request.parameters, "cnn", "/d", tmp_path / "m")
    assert "--steps-per-epoch" not in options.argv() and "--workers" not in options.argv()
    assert parsed(options.argv()) == options


def test_each_local_worker_runs_the_same_training_without_workers(parsed, tmp_path):
    options = TrainOptions(model="cnn", dataset="/d", out=tmp_path / "m", workers=3,
                           checkpoint_every=20, sink="http://127.0.0.1:9/events")
    worker = options.single_process()
    assert "--workers" not in worker.argv()
    assert parsed(worker.argv()) == TrainOptions(model="cnn", dataset="/d", out=tmp_path / "m",
                                                 checkpoint_every=20,
                                                 sink="http://127.0.0.1:9/events")


def test_the_tfjob_runs_the_same_command_line(parsed):
    names = ClusterNames()
    manifest = tfjob_manifest(names).replace("{{inputs.parameters.workers}}", "2")
    container = yaml.safe_load(manifest)["spec"]["tfReplicaSpecs"]["Worker"][
        "template"]["spec"]["containers"][0]
    assert container["command"] == ["retrain"]
    values = {"{{inputs.parameters.model}}": "batch_norm",
              "{{inputs.parameters.warm-start}}": "/var/lib/retrain/models/fashion-mnist/4",
              "{{inputs.parameters.dataset-uri}}": "/var/lib/retrain/store/datasets/k",
              "{{workflow.name}}": "retrain-x7",
              "{{inputs.parameters.epochs}}": "2",
              "{{inputs.parameters.steps-per-epoch}}": "0",
              "{{inputs.parameters.batch-size}}": "32",
              "{{inputs.parameters.learning-rate}}": "0.002",
              "{{inputs.parameters.round-size}}": "3",
              "{{inputs.parameters.deterministic}}": "true"}

    def substitute(arg: str) -> str:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        return arg

    args = [substitute(a) for a in container["args"]]
    assert container["args"] == train_argv({  # built by the one definition, not by hand
        "model": "{{inputs.parameters.model}}", "dataset": "{{inputs.parameters.dataset-uri}}",
        "out": "/var/lib/retrain/runs/{{workflow.name}}/{{inputs.parameters.model}}/model",
        "run_id": "{{workflow.name}}", "epochs": "{{inputs.parameters.epochs}}",
        "steps_per_epoch": "{{inputs.parameters.steps-per-epoch}}",
        "batch_size": "{{inputs.parameters.batch-size}}",
        "learning_rate": "{{inputs.parameters.learning-rate}}", "checkpoint_every": 100,
        "warm_start": "{{inputs.parameters.warm-start}}", "sink": names.model_trained_sink,
        "round_size": "{{inputs.parameters.round-size}}",
        "deterministic": "{{inputs.parameters.deterministic}}"})
    assert parsed(args) == TrainOptions(
        model="batch_norm", dataset="/var/lib/retrain/store/datasets/k",
        out=Path("/var/lib/retrain/runs/retrain-x7/batch_norm/model"), run_id="retrain-x7",
        epochs=2, steps_per_epoch=0, batch_size=32, learning_rate=0.002, checkpoint_every=100,
        warm_start="/var/lib/retrain/models/fashion-mnist/4", sink=names.model_trained_sink,
        round_size=3, deterministic=True)
    values["{{inputs.parameters.warm-start}}"] = ""  # no champion of this variant: no warm start
    assert parsed([substitute(a) for a in container["args"]]).warm_start is None


def test_unknown_fields_cannot_reach_a_command_line():
    with pytest.raises(ValueError, match="not training options"):
        train_argv({"model": "cnn", "epoch": 3})


def test_a_model_sent_to_the_selector_must_be_written_inside_the_runs_folder(tmp_path):
    """The selector judges only models inside the runs folder (services/selector/admission.py
    refuses any other ``model.trained``): a training with a sink and its ``--out`` elsewhere
    is a problem of its options, found before it trains, not after."""
    runs = tmp_path / "home" / "runs"
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "metadata.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere" / "model"

    def problems(out, sink="stream"):
        return TrainOptions(model="cnn", dataset=str(dataset), out=out,
                            sink=sink).problems(runs_dir=runs)

    [problem] = problems(elsewhere)
    assert problem == (f"--out {elsewhere}: outside the runs folder {runs.resolve()}, so the "
                       "selector would refuse its model.trained (it judges only models this "
                       "project trained); write the model under the runs folder, or train "
                       "without --sink")
    assert problems(elsewhere, sink="http://127.0.0.1:9/events") == [problem]
    assert problems(elsewhere, sink=None) == []  # no selector involved
    assert problems(runs / "r" / "cnn" / "model") == []
    assert problems(runs / "r" / ".." / ".." / "x" / "model") != []  # as resolved
    assert problems(runs) != []  # the runs folder itself holds models, it is none
    runs.mkdir(parents=True)
    (runs / "link").symlink_to(elsewhere.parent, target_is_directory=True)
    assert problems(runs / "link" / "model") != []  # a link is followed, as the selector does
    assert TrainOptions(model="cnn", dataset=str(dataset), out=elsewhere,
                        sink="stream").problems() == []  # no runs folder given: not checked


def test_a_seed_and_op_determinism_reach_the_command_line_only_when_asked(parsed, tmp_path):
    usual = TrainOptions(model="cnn", dataset="/d", out=tmp_path / "m")
    assert "--seed" not in usual.argv() and "--deterministic" not in usual.argv()
    asked = TrainOptions(model="cnn", dataset="/d", out=tmp_path / "m", seed=11,
                         deterministic=True)
    assert asked.argv()[-4:] == ["--seed", "11", "--deterministic", "true"]
    assert parsed(asked.argv()) == asked
    params = RunParameters(models=("cnn",), deterministic=True)
    assert Trainings.options("r", params, "cnn", "/d", tmp_path / "m").deterministic
