"""``retrain up``'s one line per event a person cares about."""

from events import make_event
from events.payloads import CheckResult, DatasetRejected
from retrain.narrate import line


def test_a_blocked_run_says_which_checks_blocked_it_and_how_to_train_anyway():
    event = make_event("dataset.rejected", DatasetRejected(
        run_id="run-1", digest="d", dataset_uri="/s/datasets/k", reference="r", checks=(
            CheckResult(name="labels", value=0, threshold=0, status="pass", detail="fine"),
            CheckResult(name="pixel_drift", value=0.9, threshold=0.2, status="block",
                        detail="train: class 3, 100 new images, distance 0.906"))), source="t")
    said = line(event)
    assert said is not None and said.startswith("run run-1: BLOCKED by the data gate")
    assert "pixel_drift (train: class 3, 100 new images, distance 0.906)" in said
    assert "labels" not in said and "retrain approve run-1" in said
