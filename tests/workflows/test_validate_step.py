"""``retrain step validate`` as Argo runs it: the WorkflowTemplate's own command lines, with
Argo's placeholders filled in, run by the real CLI in a process of their own, on real Redis
and really ingested data; each step's outputs are read from the files Argo reads
(``tests/workflows/argo.py``).

No champion is served here: the checks run without a reference, as before a first model,
and the one corruption used (260 of the training split's 860 images copies of others) needs
none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import typer.main

from core import timeline
from core.cache_policy import Policy
from dataset import idx, pinned
from dataset.cache import ingestion_cache
from dataset.layout import BASE_FILES
from dataset.seed import generate
from events.payloads import RunParameters
from events.sinks import read_stream
from retrain.cli import app
from tests.conftest import write_dataset
from tests.workflows.argo import RETRAIN, Argo, pod_env, template
from workflows import record, steps
from workflows.definition import OUTPUTS, TERMINATION_LOG
from workflows.validate import CHECKS

pytestmark = pytest.mark.integration

WORKFLOW = "retrain-0a1b2c3d4e5f60718293"  # what Argo substitutes for {{workflow.name}}
APPROVAL = "retrain-9f8e7d6c5b4a39281706"  # the Workflow retrain approve's event starts


def _copies(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(600, 260)


def _duplicate(root: Path, seed: int) -> None:
    """Rewrite the training split of ``write_dataset``'s files so that 260 more images each
    repeat one of its 600 (some of those twice)."""
    images, labels = generate(600, 3)
    copies = _copies(seed)
    idx.write_images(root / BASE_FILES["train"][0], np.concatenate([images, images[copies]]))
    idx.write_labels(root / BASE_FILES["train"][1], np.concatenate([labels, labels[copies]]))


def _repeating(seed: int) -> int:
    """How many of ``_duplicate``'s 860 training images repeat another: each copy and each
    image copied."""
    ids = np.concatenate([np.arange(600), _copies(seed)])
    return int((np.bincount(ids)[ids] > 1).sum())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The datasets, written once: clean, and two with 30 % duplicates (different copies)."""
    base = tmp_path_factory.mktemp("sources")
    clean = write_dataset(base / "clean")
    shutil.copytree(clean, base / "duplicated")
    _duplicate(base / "duplicated", seed=8)
    shutil.copytree(clean, base / "duplicated-otherwise")
    _duplicate(base / "duplicated-otherwise", seed=9)
    return base


@pytest.fixture
def on_volume(sources, settings):
    """Puts one of the ``sources`` on the shared volume (the home), where the watcher would."""
    def put(name: str, folder: str = "fashion-mnist") -> Path:
        return shutil.copytree(sources / name, settings.home / "data" / folder)
    return put


def _ingested(settings, r, root: Path) -> str:
    """The dataset ``root`` ingested into the home's store by the functions the check-cache
    and ingest steps call."""
    cache = ingestion_cache(r, settings.cache_ttl_seconds)
    fp = steps.fingerprint_step(root, settings.home / "statcache")
    check = steps.check_cache(cache, root, fp, Policy.parse("exact"))
    return steps.ingest_step(cache, root, settings.store_dir, fp, check.key).entry.dataset_uri


@pytest.fixture
def argo(settings, redis_handle, tmp_path):
    def make(name: str = WORKFLOW, **arguments: str) -> Argo:
        return Argo(settings.home, redis_handle.url, tmp_path / "pods", name, **arguments)
    return make


def test_a_blocked_dataset_ends_the_run_at_the_gate_with_exit_3_naming_every_failed_check(
        settings, r, argo, on_volume):
    data = on_volume("duplicated")
    run = argo(**{"data-uri": str(data), "parameters": '{"models": ["cnn"], "epochs": 2}',
                  "event-id": "fashion-mnist@7:0a1b2c"})
    plan = run.run("plan")
    checked = run.run("check-cache", **{"cache-policy": plan.outputs["cache-policy"]})
    assert (plan.code, checked.code, checked.outputs["hit"]) == (0, 0, "false"), checked.stderr
    # the ingest step's own work, in this process (a second TensorFlow start costs seconds)
    assert _ingested(settings, r, data) == checked.outputs["dataset-uri"]
    gate = run.run("validate", **{"dataset-uri": checked.outputs["dataset-uri"],
                                  "validation": plan.outputs["validation"]})

    assert gate.code == 3, gate.stderr  # Failed: the trainings (validate.Succeeded) never start
    assert gate.outputs["status"] == "blocked" and gate.outputs["failed"] == "duplicates"
    report = json.loads(gate.outputs["report"])
    assert [c["name"] for c in report["checks"]] == list(CHECKS) and report["mode"] == "block"
    [duplicates] = [c for c in report["checks"] if c["status"] != "pass"]
    repeating = _repeating(seed=8)
    assert duplicates["status"] == "block" and duplicates["value"] == round(repeating / 860, 6)
    # what Argo shows as the step's message, and the step's log
    assert gate.message.startswith("the data gate blocked the run: duplicates block (")
    assert f"{repeating} of 860 new training images repeat another" in gate.message
    assert "error: the data gate blocked the run: duplicates block" in gate.stderr
    # the run's record: what retrain status, the dashboard and retrain approve read
    kept = record.get(r, WORKFLOW)
    assert kept["status"] == "blocked" and kept["error"] == gate.message
    assert kept["data"] == str(data) and kept["event_id"] == "fashion-mnist@7:0a1b2c"
    assert kept["parameters"] == RunParameters(models=("cnn",), epochs=2).model_dump(mode="json")
    assert kept["dataset_uri"] == checked.outputs["dataset-uri"]
    assert kept["validation"]["checks"] == report["checks"]
    assert [(s["name"], s["status"]) for s in kept["steps"]] == [
        ("fingerprint", "succeeded"), ("check_cache", "succeeded"), ("validate", "blocked")]
    # dataset.rejected, carrying the report, on the cluster's event stream and the timeline
    [rejected] = [e for e in read_stream(r) if e["type"] == "dev.retrain.dataset.rejected"]
    assert rejected["data"]["run_id"] == WORKFLOW
    assert rejected["data"]["checks"] == report["checks"]
    assert [e.step for e in timeline.recent(r, 5, kind="event")] == ["dataset.rejected"]


def test_a_clean_dataset_passes_and_the_run_keeps_its_report(settings, r, argo, on_volume):
    data = on_volume("clean")
    uri = _ingested(settings, r, data)
    gate = argo(**{"data-uri": str(data)}).run("validate", **{"dataset-uri": uri,
                                                              "validation": "block"})
    assert gate.code == 0, gate.stderr
    assert gate.outputs["status"] == "pass" and gate.outputs["failed"] == ""
    assert gate.message == "" and read_stream(r) == []
    # the run goes on: its record has the validate step and the report, as locally
    kept = record.get(r, WORKFLOW)
    assert kept["status"] == "running" and kept["validation"] == json.loads(gate.outputs["report"])
    [step] = kept["steps"]
    assert (step["name"], step["status"], step["verdict"]) == ("validate", "succeeded", "pass")
    assert kept["dataset_uri"] == uri
    # the first dataset validated becomes the pinned evaluation set, as in the local runner
    assert pinned.current(settings.store_dir).dataset_uri == uri


def test_an_approval_lets_the_approved_dataset_through_and_is_kept_with_the_blocked_run(
        settings, r, argo, on_volume):
    data = on_volume("duplicated")
    uri = _ingested(settings, r, data)
    blocked = argo(**{"data-uri": str(data)}).run("validate", **{"dataset-uri": uri,
                                                                 "validation": "block"})
    assert blocked.code == 3
    # what retrain approve sends: the run's parameters with validation warn, who approved
    approval = argo(APPROVAL, **{"data-uri": str(data), "parameters": '{"validation": "warn"}',
                                 "event-id": "approve/" + WORKFLOW, "approves": WORKFLOW,
                                 "approved-by": "ada"})
    approved = approval.run("validate", **{"dataset-uri": uri, "validation": "warn"})

    assert approved.code == 0, approved.stderr
    assert approved.outputs["status"] == "warn" and approved.outputs["failed"] == "duplicates"
    kept = record.get(r, WORKFLOW)
    assert kept["status"] == "approved" and kept["approval"]["overruled"] == ["duplicates"]
    # who approved: what the cluster authenticated (the webhook's token), not what the body
    # said, which is kept as a note
    assert kept["approval"]["by"] == "token:retrain-webhook-token"
    assert kept["approval"]["note"] == "ada"
    assert kept["approval"]["resumed_as"] == APPROVAL  # whose trainings run
    assert record.get(r, APPROVAL)["status"] == "running"  # (it was not blocked: it trains)
    assert "approved by token:retrain-webhook-token (note: 'ada')" in approved.stderr


def test_an_approval_does_not_cover_data_that_changed_since(settings, r, argo, on_volume):
    first = on_volume("duplicated")
    blocked = argo(**{"data-uri": str(first)}).run(
        "validate", **{"dataset-uri": _ingested(settings, r, first), "validation": "block"})
    assert blocked.code == 3
    changed = on_volume("duplicated-otherwise", "other")
    other = argo(APPROVAL, **{"data-uri": str(changed), "parameters": '{"validation": "warn"}',
                              "approves": WORKFLOW, "approved-by": "ada"})
    gate = other.run("validate", **{"dataset-uri": _ingested(settings, r, changed),
                                    "validation": "warn"})
    # as the local runner: the approved request fails, no training starts
    assert gate.code == 1 and gate.outputs == {}
    assert f"changed since run {WORKFLOW} was approved" in gate.message
    assert "validate it again" in " ".join(gate.stderr.split())
    first_run = record.get(r, WORKFLOW)
    assert first_run["status"] == "blocked" and "approval" not in first_run
    refused = record.get(r, APPROVAL)  # the approving run ends failed, saying why
    assert refused["status"] == "failed" and "changed since run" in refused["error"]
    assert [(s["name"], s["status"]) for s in refused["steps"]] == [("validate", "failed")]


@pytest.mark.parametrize(("args", "says"), [
    (["--mode", "skip"], "'skip' is not one of block, warn, off"),
    (["--dataset-uri", "/etc"], "is not a dataset of the store"),
])
def test_bad_input_is_refused_with_exit_2_saying_why(args, says, settings):
    # each is refused before the dataset is looked at
    argv = ["step", "validate", "--dataset-uri", str(settings.store_dir / "datasets" / "k"),
            "--data", str(settings.home / "data" / "fashion-mnist"), *args]
    done = subprocess.run([RETRAIN, *argv], env=pod_env(settings.home, settings.redis_url),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and says in " ".join(done.stderr.split()), done.stderr


def test_the_rendered_command_line_parses_with_the_real_cli():
    [validate] = [t for t in template()["spec"]["templates"] if t["name"] == "validate"]
    args = validate["container"]["args"]
    group = typer.main.get_command(app)
    ctx = group.make_context("retrain", list(args))
    step = group.get_command(ctx, args[0])
    command = step.get_command(ctx, args[1])
    parsed = command.make_context(args[1], args[2:], parent=ctx).params
    assert validate["container"]["command"] == ["retrain"]
    assert parsed["dataset_uri"] == "{{inputs.parameters.dataset-uri}}"
    assert parsed["mode"] == "{{inputs.parameters.validation}}"
    assert parsed["run_id"] == "{{workflow.name}}" and parsed["sink"] == "stream"
    assert parsed["outputs"] == Path(OUTPUTS) and parsed["message_file"] == Path(TERMINATION_LOG)
