"""A run's record: written by its recorder, read back by whoever shows or recovers runs."""

import json

import pytest

from core import timeline
from workflows import record
from workflows.record import RunRecorder, RunRequest

pytestmark = pytest.mark.integration


def _run(r, run_id, started_at, status="succeeded"):
    summary = {"run_id": run_id, "status": status, "steps": [], "models": {}}
    record.save(r, summary, started_at=started_at)
    return summary


def test_a_recorded_run_is_read_back_by_its_id(r):
    recorder = RunRecorder(r, RunRequest("/data/a", run_id="run-a", trigger="manual"))
    found = record.get(r, "run-a")
    assert found == json.loads(json.dumps(recorder.summary))
    assert found["status"] == "running" and found["trigger"] == "manual"
    assert record.get(r, "run-never") is None


def test_recent_runs_come_newest_first_a_page_at_a_time(r):
    for n in range(5):
        _run(r, f"run-{n}", started_at=1000.0 + n)
    first = record.recent_runs(r, 0, 2)
    assert first.total == 5 and first.offset == 0
    assert [s["run_id"] for s in first.runs] == ["run-4", "run-3"]
    assert [s["run_id"] for s in record.recent_runs(r, 4, 2).runs] == ["run-0"]
    assert record.recent_runs(r, 5, 2).runs == []


def test_a_run_whose_summary_expired_is_left_out_of_the_recent_ones(r):
    _run(r, "run-old", started_at=1000.0)
    _run(r, "run-new", started_at=2000.0)
    r.delete("retrain:run:run-old")  # as its expiry would
    page = record.recent_runs(r, 0, 10)
    assert page.total == 2 and [s["run_id"] for s in page.runs] == ["run-new"]


def test_runs_since_a_time_are_those_started_then_or_later_oldest_first(r):
    for n in range(4):
        _run(r, f"run-{n}", started_at=1000.0 + n)
    assert [s["run_id"] for s in record.runs_since(r, 1002.0)] == ["run-2", "run-3"]
    assert record.runs_since(r, 5000.0) == []


def test_a_run_left_running_is_failed_once_with_the_reason(r):
    _run(r, "run-a", started_at=1000.0, status="running")
    assert record.fail_if_running(r, "run-a", "its runner died")
    closed = record.get(r, "run-a")
    assert closed["status"] == "failed" and closed["error"] == "its runner died"
    assert not record.fail_if_running(r, "run-a", "again")  # no longer running
    assert record.get(r, "run-a")["error"] == "its runner died"
    [entry] = [e for e in timeline.recent(r, 10) if e.kind == "run"]
    assert entry.detail == {"run_id": "run-a", "status": "failed", "error": "its runner died"}
