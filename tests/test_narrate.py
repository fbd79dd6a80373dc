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


def _rolled_back():
    from events.payloads import GateRule, LiveFigures, ModelRolledBack

    return make_event("model.rolledback", ModelRolledBack(
        version=2, model_digest="f" * 64, run_id="run-2", model_type="cnn", restored_version=3,
        previous_version=1, rule="consecutive_errors", reason="live guard: version 2 broke it",
        rules=(GateRule(name="consecutive_errors", passed=False, value=5, threshold=5,
                        detail="5 errors in a row (at most 4)"),
               GateRule(name="error_rate", passed=False, value=0.2, threshold=0.01)),
        window=LiveFigures(version=2, requests=25, errors=5, error_rate=0.2, p99_seconds=0.004,
                           seconds=1.5),
        baseline=LiveFigures(version=1, requests=200, errors=0, error_rate=0.0,
                             p99_seconds=0.005)), source="retrain/selector", id="rolledback/2")


def test_a_rollback_by_the_guard_names_the_rule_the_figures_and_what_serves_now():
    said = line(_rolled_back())
    assert said == (
        "version 2 ROLLED BACK by the live guard (consecutive_errors: 5 errors in a row (at "
        "most 4)): 25 answers in 1.5 s, 5 errors (20.0%), p99 4 ms against version 1's 200 "
        "answers, 0 errors (0.0%), p99 5 ms; version 3 serves now (version 1's model)")


def test_a_settled_version_is_told_from_the_guards_outcome_and_nothing_else_is():
    import io

    from rich.console import Console

    from retrain.narrate import guard_printer

    out = io.StringIO()
    tell = guard_printer(Console(file=out, width=300))
    tell(4, {"state": "settled", "previous_version": 3, "rules": [],
             "window": {"version": 4, "requests": 30, "errors": 0, "error_rate": 0.0,
                        "p99_seconds": 0.0075, "classes": [3] * 10, "seconds": 2.25},
             "baseline": None})
    tell(2, {"state": "rolledback", "rule": "error_rate"})  # its event has the line
    assert out.getvalue() == (
        "version 4 settled: 30 answers in 2.2 s, 0 errors (0.0%), p99 8 ms against version 3's "
        "no window (nothing served before it on this server); every rule passed\n")
