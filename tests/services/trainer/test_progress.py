"""A training's progress, written beside it and read back by those who show it."""

import pytest

from services.trainer import progress
from services.trainer.progress import ProgressWriter, progress_key

pytestmark = pytest.mark.integration


def _train(r, run_id, model, steps, state="done", **fields):
    writer = ProgressWriter(r, progress_key(run_id, model))
    for step in steps:
        writer.post({"step": step, "loss": 1 / step, "accuracy": step / 100})
    writer.end(state, **fields)
    writer.close()


def test_a_training_is_read_back_with_its_curve(r):
    _train(r, "run-a", "cnn", [10, 20, 30], reason="fine")
    found = progress.read(r, "run-a", "cnn")
    assert found.exists and found.state == "done" and found.fields["reason"] == "fine"
    assert found.latest == {"step": 30, "loss": 1 / 30, "accuracy": 0.3}
    assert [p["step"] for p in found.points] == [10, 20, 30]
    assert progress.read(r, "run-a", "cnn", points=False).points == []


def test_a_training_never_started_reads_as_nothing_yet(r):
    found = progress.read(r, "run-a", "dropout")
    assert not found.exists and found.state is None and found.latest is None
    assert found.points == []


def test_a_runs_trainings_and_several_runs_are_read_at_once(r):
    _train(r, "run-a", "cnn", [10])
    _train(r, "run-a", "dropout", [10, 20], state="failed")
    _train(r, "run-b", "cnn", [5])
    of_a = progress.all_for(r, "run-a", ["cnn", "dropout", "batch_norm"])
    assert {m: p.state for m, p in of_a.items()} == {"cnn": "done", "dropout": "failed",
                                                      "batch_norm": None}
    assert [p["step"] for p in of_a["dropout"].points] == [10, 20]
    both = progress.read_many(r, [("run-a", "cnn"), ("run-b", "cnn")], points=False)
    assert {k: p.latest["step"] for k, p in both.items()} == {("run-a", "cnn"): 10,
                                                              ("run-b", "cnn"): 5}


def test_trainings_no_run_recorded_are_found_and_shown_by_status(r, tmp_path):
    """A standalone retrain train (run ``manual``) and a cluster's TFJob (run: the workflow's
    name) record progress but no local run: retrain status still shows them."""
    from retrain.report import collect_status

    _train(r, "manual", "cnn", [5], state="training")
    _train(r, "retrain-wf-x7:k2", "dropout", [10])  # a run id may hold a colon
    # newest first, from an index kept as they write (no scan of the keyspace)
    assert progress.trainings(r) == [("retrain-wf-x7:k2", "dropout"), ("manual", "cnn")]
    assert progress.trainings(r, limit=1) == [("retrain-wf-x7:k2", "dropout")]
    training = collect_status(r, str(tmp_path / "models"))["training"]
    assert training["manual:cnn"]["state"] == "training" and training["manual:cnn"]["step"] == 5
    assert training["retrain-wf-x7:k2:dropout"]["step"] == 10
