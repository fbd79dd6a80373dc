"""A cluster's run keeps the record a local run keeps: the WorkflowTemplate's steps, each run
as Argo runs it (its command line from the rendered template, by the real CLI in a process of
its own, ``tests/workflows/argo.py``) in the DAG's order, on real Redis and real data, write
the run's summary step by step; the trainer is the test trainer run with the TFJob's own
command line, its job's end told by a stand-in Kubernetes API. The selector then judges the
model from the event stream, as the cluster's selector does, and the served version's lineage
reaches the dataset's units, the validation report, the run's trigger and parameters and the
Git push that caused it."""

from __future__ import annotations

import json

import pytest

from core.settings import MODEL_NAME
from events import make_event
from events.codec import encode
from events.payloads import DatasetUpdated, Origin, RunParameters
from services.selector.backends import LocalBackend
from services.selector.champion import ChampionStore, scoped_key
from services.selector.main import build_selector, selector_consumer
from tests.conftest import write_dataset
from tests.workflows.argo import Argo
from tests.workflows.test_tfjob import FAILED, NAME, SUCCEEDED, TOKEN, TFJobStandIn
from workflows import record
from workflows.definition import workflow_name
from workflows.lineage import lineage

pytestmark = pytest.mark.integration

PARAMETERS = {"models": ["cnn"], "steps_per_epoch": 3, "batch_size": 32}
PUSH = Origin(kind="git", repository="https://git.example/fm/data.git", ref="refs/heads/main",
              commit="9fceb02d0ae598e95dc970b74767f19372d61af8", pusher="ada",
              delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")


def _event(data: str):
    """What the watcher sends for a push (structured mode, as the webhook receives it)."""
    return make_event("dataset.updated", DatasetUpdated(
        uri=data, digest="d" * 64, previous_digest="c" * 64, trigger="github",
        parameters=RunParameters(**PARAMETERS), origin=PUSH), source="retrain/watcher/fm",
        id="fashion-mnist@3:0a1b2c3d")


def _run_workflow(argo: Argo, trainer: tuple[str, ...], models: str) -> dict[str, str]:
    """The DAG: plan ─► check-cache ─miss─► ingest ─► validate ─► per model: check-training
    ─miss─► the TFJob ─► wait-training. Returns the plan's outputs."""
    plan = argo.run("plan")
    assert plan.code == 0, plan.stderr
    out = plan.outputs
    checked = argo.run("check-cache", **{"cache-policy": out["cache-policy"]})
    assert checked.code == 0 and checked.outputs["hit"] == "false", checked.stderr
    ingested = argo.run("ingest", here=True, key=checked.outputs["key"])
    assert ingested.code == 0, ingested.stderr
    dataset_uri = checked.outputs["dataset-uri"]
    gate = argo.run("validate", **{"dataset-uri": dataset_uri, "validation": out["validation"]})
    assert gate.code == 0, gate.stderr
    for item in json.loads(out["trainings"]):
        inputs = {"model": item["model"], "warm-start": item["warm-start"],
                  "dataset-uri": dataset_uri,
                  **{n: out[n] for n in ("epochs", "steps-per-epoch", "batch-size",
                                         "learning-rate", "workers", "round-size",
                                         "train-cache", "force", "deterministic")}}
        check = argo.run("check-training", **inputs)
        assert check.code == 0 and check.outputs["hit"] == "false", check.stderr
        trained = argo.train(trainer, {"RETRAIN_STANDIN_MODELS": models}, **inputs)
        assert trained.code == 0, trained.stderr
        with TFJobStandIn([SUCCEEDED]) as api:  # (a running job is looked at again in 10 s)
            waited = argo.run("wait-training", env={"RETRAIN_KUBE_API_URL": api.server.url,
                                                    "RETRAIN_KUBE_TOKEN": TOKEN},
                              **{"job-name": NAME, "model": item["model"],
                                 "round-size": out["round-size"]})
        assert waited.code == 0, waited.stderr
    return out


@pytest.mark.slow
def test_a_cluster_run_keeps_the_local_runners_record_and_its_version_has_a_lineage(
        settings, r, redis_handle, tmp_path, standin_trainer, trained_models):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    event = _event(str(data))
    _, body = encode(event, "structured")
    run_id = workflow_name(event.source, event.id)  # what the Sensor names the Workflow
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", run_id, **{
        "data-uri": str(data), "digest": "d" * 64, "parameters": json.dumps(PARAMETERS),
        "event-id": event.id, "event": body.decode()})

    _run_workflow(argo, standin_trainer, str(trained_models.folder))

    kept = record.get(r, run_id)
    # the local runner's record: its steps by the same names, the run ended by the last one
    assert [(s["name"], s["status"]) for s in kept["steps"]] == [
        ("fingerprint", "succeeded"), ("check_cache", "succeeded"), ("ingest", "succeeded"),
        ("validate", "succeeded"), ("train:cnn", "succeeded")]
    assert kept["status"] == "succeeded" and kept["seconds"] > 0
    assert kept["trigger"] == "dataset.updated/github" and kept["event_id"] == event.id
    assert kept["parameters"] == RunParameters(**PARAMETERS).model_dump(mode="json")
    assert kept["event"]["origin"] == PUSH.model_dump(mode="json")
    assert kept["event"]["source"] == "retrain/watcher/fm"
    assert kept["models"]["cnn"]["status"] == "trained"
    assert kept["validation"]["status"] == "pass"
    [ingest] = [s for s in kept["steps"] if s["name"] == "ingest"]
    assert ingest["units"]["ingested"] and ingest["units"]["reused"] == []

    # the cluster's selector: the trainer's model.trained from the stream, judged, promoted
    decisions = []
    selector = build_selector(settings, r, decisions.append,
                              LocalBackend(settings.model_repo, MODEL_NAME), keep=record.keep)
    selector_consumer(r, selector, settings).poll()
    [decision] = decisions
    assert decision.type.short == "model.promoted" and decision.data.run_id == run_id

    found = lineage(r, str(settings.model_repo.resolve()), decision.data.version)
    assert found["run"]["run_id"] == run_id and found["run"]["status"] == "succeeded"
    assert found["run"]["trigger"] == "dataset.updated/github"
    assert found["run"]["parameters"]["steps_per_epoch"] == 3
    units = found["dataset"]["units"]
    assert [u["id"] for u in units["ingested"]] == ingest["units"]["ingested"]
    assert {u["split"] for u in units["ingested"]} == {"train", "test"}
    assert found["validation"]["status"] == "pass"
    assert [c["name"] for c in found["validation"]["checks"]] == [
        c["name"] for c in kept["validation"]["checks"]]
    [cause] = found["events"]
    assert cause["origin"]["commit"] == PUSH.commit and cause["origin"]["pusher"] == "ada"
    assert cause["id"] == event.id and cause["type"] == "dev.retrain.dataset.updated"
    assert found["training"]["status"] == "trained" and found["training"]["trained_by"] == run_id
    # the version is served: its run's record and decisions are kept for good
    scope = str(settings.model_repo.resolve())
    assert r.ttl(f"retrain:run:{run_id}") == -1
    assert ChampionStore(r, scope).decisions_of(run_id)
    assert r.ttl(scoped_key(scope, "audit") + f":run:{run_id}") == -1


def test_a_plan_refused_is_recorded_failed_saying_why(settings, r, redis_handle, tmp_path):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-bad", **{
        "data-uri": str(data), "event-id": "e-1", "event": '{"specversion": "1.0"}'})
    plan = argo.run("plan")
    assert plan.code == 2 and plan.outputs == {}
    kept = record.get(r, "retrain-bad")
    assert kept["status"] == "failed" and kept["event_id"] == "e-1"
    assert "the triggering event: missing required attribute 'id'" in kept["error"]
    assert [(s["name"], s["status"]) for s in kept["steps"]] == [("plan", "failed")]


def test_a_tfjob_that_fails_ends_the_run_failed_with_its_reason(settings, r, redis_handle,
                                                                tmp_path):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-oom",
                **{"data-uri": str(data), "parameters": '{"models": ["cnn"]}'})
    assert argo.run("plan").code == 0
    with TFJobStandIn([FAILED]) as api:
        waited = argo.run("wait-training", env={"RETRAIN_KUBE_API_URL": api.server.url,
                                                "RETRAIN_KUBE_TOKEN": TOKEN},
                          **{"job-name": NAME, "model": "cnn", "round-size": "1"})
    assert waited.code == 1
    kept = record.get(r, "retrain-oom")
    assert kept["trigger"] == "workflow"  # submitted without an event
    [step] = kept["steps"]
    assert (step["name"], step["status"]) == ("train:cnn", "failed")
    assert kept["models"]["cnn"]["status"] == "failed"
    assert "backoff limit" in kept["models"]["cnn"]["reason"]
    assert kept["status"] == "failed" and "cnn (TFJob" in kept["error"]


def _begun(r, run_id, models):
    from workflows import cluster_run
    from workflows.record import RunRequest

    cluster_run.start(r, RunRequest("/d", RunParameters(models=models), "workflow", None, run_id))
    return cluster_run.WorkflowRun(r, run_id)


def test_the_last_training_to_end_ends_the_run_whichever_order_they_end_in(r):
    from workflows.cluster_run import Step

    run = _begun(r, "retrain-two", ("cnn", "dropout"))
    dropout = Step("train:dropout", "failed", summary={"models": {"dropout": {
        "status": "failed", "reason": "OOM-killed"}}})
    assert run.record(dropout, 1.0, 0.0)["status"] == "running"  # cnn has no outcome yet
    cnn = Step("train:cnn", "cached", summary={"models": {"cnn": {"status": "trained"}}})
    ended = run.record(cnn, 0.0, 0.0)
    assert ended["status"] == "failed" and ended["error"] == "training failed: dropout (OOM-killed)"
    assert set(ended["models"]) == {"cnn", "dropout"} and ended["seconds"] >= 0


def test_a_run_that_trains_nothing_ends_once_validated(r):
    from workflows.cluster_run import Step

    run = _begun(r, "retrain-none", ())
    assert run.record(Step("check_cache", "succeeded"), 0.1, 0.0)["status"] == "running"
    assert run.record(Step("validate", "succeeded"), 0.1, 0.0)["status"] == "succeeded"


# the exit handler ---------------------------------------------------------------------------------
def _validated(r, run_id):
    from workflows.cluster_run import Step, WorkflowRun

    WorkflowRun(r, run_id).record(Step("validate", "succeeded"), 0.1, 0.0)


def test_the_exit_handler_tells_each_training_that_never_ended_once_and_the_round_closes(
        settings, r, redis_handle, tmp_path):
    """cnn's TFJob failed (its wait step told the selector); batch_norm's wait was killed by
    the Workflow's deadline while its job ran: the exit handler deletes that job and tells
    training.failed, so the selector's round (size 2) closes; run again, it tells nothing."""
    from events.sinks import read_stream
    from services.selector.rounds import RoundStore
    from tests.workflows.test_tfjob import TFJobsStandIn, _job
    from workflows.tfjob import owned_job

    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-late",
                **{"data-uri": str(data), "parameters": '{"models": ["cnn", "batch_norm"]}'})
    assert argo.run("plan", here=True).code == 0
    _validated(r, "retrain-late")
    with TFJobStandIn([FAILED]) as api:
        waited = argo.run("wait-training", here=True, env={"RETRAIN_KUBE_API_URL": api.server.url,
                                                "RETRAIN_KUBE_TOKEN": TOKEN},
                          **{"job-name": NAME, "model": "cnn", "round-size": "2"})
    assert waited.code == 1
    running = owned_job(_job(), "retrain-late", argo.uid, "batch_norm")
    kube = {"RETRAIN_KUBE_TOKEN": TOKEN}
    with TFJobsStandIn([running]) as api:
        finished = argo.run("finish", here=True, env={**kube, "RETRAIN_KUBE_API_URL": api.server.url})
        again = argo.run("finish", here=True, env={**kube, "RETRAIN_KUBE_API_URL": api.server.url})
    assert finished.code == 0 and again.code == 0, finished.stderr + again.stderr
    assert api.jobs == {}  # deleted: it cannot send a model after its failure
    events = read_stream(r)
    assert [(e["id"], e["data"]["round_size"]) for e in events] == [
        ("retrain-late/cnn/failed", 2), ("retrain-late/batch_norm/failed", 2)]
    reason = events[1]["data"]["reason"]
    assert reason.startswith("the workflow ended Failed before this training did")
    assert running["metadata"]["name"] + " deleted" in reason
    kept = record.get(r, "retrain-late")
    assert kept["models"]["batch_norm"] == {"status": "failed", "seconds": 0.0, "reason": reason}
    assert kept["status"] == "failed" and "batch_norm (the workflow ended" in kept["error"]
    assert [s["name"] for s in kept["steps"]] == ["validate", "train:cnn", "train:batch_norm"]

    # the cluster's selector, with the shipped round deadline: the round closes on both ends
    selector = build_selector(settings.model_copy(update={"round_deadline_seconds": 16200.0}),
                              r, [].append, LocalBackend(settings.model_repo, MODEL_NAME))
    selector_consumer(r, selector, settings).poll()
    rounds = RoundStore(r, str(settings.model_repo.resolve()))
    assert rounds.open_rounds() == {}
    assert rounds.ended("retrain-late", "cnn", "late", 2).late  # closed


def test_the_exit_handler_records_a_training_whose_trainer_finished_and_tells_nothing(
        settings, r, redis_handle, tmp_path):
    """The Workflow's deadline killed the wait after the trainer had written its result (and
    sent its own model.trained): the training ended; it is recorded trained, not told."""
    from events.sinks import read_stream

    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-done",
                **{"data-uri": str(data), "parameters": '{"models": ["cnn"]}'})
    assert argo.run("plan", here=True).code == 0
    _validated(r, "retrain-done")
    folder = settings.home / "runs" / "retrain-done" / "cnn"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "model_uri": str(folder / "model"), "val_accuracy": 0.81, "digest": "d" * 64}))
    finished = argo.run("finish", here=True, env={"RETRAIN_KUBE_API_URL": "http://127.0.0.1:9"})
    assert finished.code == 0, finished.stderr
    assert read_stream(r) == []
    kept = record.get(r, "retrain-done")
    assert kept["models"]["cnn"]["status"] == "trained" and kept["status"] == "succeeded"


def test_a_workflow_that_died_before_its_trainings_tells_nothing_and_ends_its_run(
        settings, r, redis_handle, tmp_path):
    """The ingest step's pod was OOM-killed: no training started, no round waits; the run's
    record, which nothing else would end, ends failed saying how its Workflow ended."""
    from events.sinks import read_stream

    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-oom-ingest",
                **{"data-uri": str(data)})
    assert argo.run("plan", here=True).code == 0
    argo.status = "Error"
    finished = argo.run("finish", here=True)
    assert finished.code == 0, finished.stderr
    assert read_stream(r) == []
    kept = record.get(r, "retrain-oom-ingest")
    assert kept["status"] == "failed"
    assert kept["error"] == "the workflow ended Error before the run did"
    assert argo.run("finish", here=True).code == 0 and record.get(r, "retrain-oom-ingest") == kept


def test_a_check_training_that_fails_tells_the_selector_as_the_trainings_end(
        settings, r, redis_handle, tmp_path):
    """No TFJob follows a failed check: the check's failure is the training's, told under the
    trainer's id with the round size (the exit handler then finds it ended)."""
    from events.sinks import read_stream

    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", "retrain-check")
    inputs = {"model": "cnn", "warm-start": "", "dataset-uri": str(tmp_path / "none"),
              "epochs": "1", "steps-per-epoch": "0", "batch-size": "64",
              "learning-rate": "0.001", "workers": "1", "round-size": "2",
              "train-cache": "sometimes", "force": "false", "deterministic": "false"}
    checked = argo.run("check-training", here=True, **inputs)
    assert checked.code != 0 and checked.outputs == {}
    [event] = read_stream(r)
    assert event["id"] == "retrain-check/cnn/failed" and event["data"]["round_size"] == 2
    assert event["data"]["reason"].startswith("check-training failed: ")
    assert record.get(r, "retrain-check")["models"]["cnn"]["status"] == "failed"
