"""Every command line the cluster runs is one the real ``retrain`` CLI accepts: the
Deployments' container args, each WorkflowTemplate step and the TFJob's workers. Parsed by
the real command tree (types, choices, required options), with each command's body replaced
by a recorder, so nothing runs."""

import re

import pytest
import typer.main

from events.payloads import RunParameters
from retrain.cli import app
from tests.manifests.kustomize import build
from tests.manifests.test_manifests import OVERLAYS, ROOT, _by_kind
from workflows.definition import ClusterNames, tfjob_manifest
from workflows.plan import Plan


def retrain_accepts(args):
    """The command the CLI would run for ``args`` and the options it parsed (raises click's
    usage error otherwise)."""
    group = typer.main.get_command(app)
    calls = []

    def record(command, path):
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                record(sub, [*path, name])
        else:
            command.callback = lambda **options: calls.append((" ".join(path), options))

    record(group, [])
    group.main(list(args), prog_name="retrain", standalone_mode=False)
    [call] = calls
    return call


def _samples(template):
    """Values for Argo's placeholders: the template's own defaults, and plain samples."""
    values = {f"workflow.parameters.{p['name']}": p.get("value", "x")
              for p in template["spec"]["arguments"]["parameters"]}
    values.update({"workflow.name": "retrain-x7k2p", "item": "cnn", "workflow.status": "Failed",
                   "workflow.uid": "0d9f3c1e-6a8b-4e0f-9a57-1c2b3d4e5f60",
                   "workflow.namespace": "retrain"})
    # what the fetch step outputs with no --fetch: the workflow's own data URI and event
    values.update({f"inputs.parameters.{k}": values[f"workflow.parameters.{k}"]
                   for k in ("data-uri", "event")})
    # what the plan step outputs (tests/workflows/test_plan.py): a run's default parameters
    values.update({f"inputs.parameters.{k}": v for k, v in Plan(
        RunParameters(), ({"model": "cnn", "warm-start": ""},)).outputs().items()})
    values.update({"inputs.parameters.model": "cnn", "inputs.parameters.warm-start": ""})
    return values


def _substitute(args, values):
    return [re.sub(r"\{\{([^}]+)\}\}", lambda m: str(values.get(m[1].strip(), "x")), a)
            for a in args]


def command_lines(docs):
    """(where, args) of every container that runs the retrain image's entry point."""
    template = _by_kind(docs, "WorkflowTemplate")["retrain"]
    values = _samples(template)
    for name, deployment in _by_kind(docs, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if "retrain" in container["image"] and "command" not in container:
                yield f"Deployment/{name}", container["args"]
    for name, runtime in _by_kind(docs, "ServingRuntime").items():
        for container in runtime["spec"]["containers"]:
            yield f"ServingRuntime/{name}", container["args"]
    for step in template["spec"]["templates"]:
        container = step.get("container")
        if container and container.get("command") == ["retrain"]:
            yield f"WorkflowTemplate step {step['name']}", _substitute(container["args"], values)
    tfjob = tfjob_manifest(ClusterNames())
    args = re.search(r"args:\n((?:\s+- .*\n)+)", tfjob)[1]
    worker = [line.strip()[2:].strip("'\"") for line in args.splitlines()]
    yield "TFJob worker", _substitute(worker, values)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_command_line_in_the_manifests_is_accepted_by_the_cli(overlay):
    lines = list(command_lines(build(ROOT / "manifests" / "overlays" / overlay)))
    accepted = {where: retrain_accepts(args)[0] for where, args in lines}
    assert accepted == {
        "Deployment/retrain-watcher": "watch",
        "Deployment/retrain-selector": "select serve",
        "Deployment/retrain-ui": "ui",
        "ServingRuntime/retrain-server": "serve",
        "WorkflowTemplate step fetch": "step fetch",
        "WorkflowTemplate step plan": "step plan",
        "WorkflowTemplate step supersede": "step supersede",
        "WorkflowTemplate step check-cache": "step check-cache",
        "WorkflowTemplate step ingest": "step ingest",
        "WorkflowTemplate step validate": "step validate",
        "WorkflowTemplate step check-training": "step check-training",
        "WorkflowTemplate step create-training": "step create-training",
        "WorkflowTemplate step wait-training": "step wait-training",
        "WorkflowTemplate step finish": "step finish",
        "TFJob worker": "train",
    }


def test_a_flag_that_does_not_exist_is_refused():
    docs = build(ROOT / "manifests" / "overlays" / "local")
    _, args = next(command_lines(docs))
    assert retrain_accepts(args)
    with pytest.raises(Exception, match="No such option: --dataa") as refused:
        retrain_accepts([*args, "--dataa", "/x"])
    assert type(refused.value).__name__ == "NoSuchOption"
    with pytest.raises(Exception, match="valid integer"):
        retrain_accepts(["train", "--model", "cnn", "--dataset", "/d", "--out", "/o",
                         "--epochs", "two"])
