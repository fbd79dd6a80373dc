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


def test_a_kept_runs_record_never_expires_through_later_writes(r):
    kept = RunRecorder(r, RunRequest("/data/a", run_id="run-served"))
    other = RunRecorder(r, RunRequest("/data/b", run_id="run-rejected"))
    assert 0 < r.ttl("retrain:run:run-served") <= record.KEPT
    assert record.keep(r, "run-served")
    assert r.ttl("retrain:run:run-served") == -1
    kept.summary["status"] = "succeeded"  # the runner goes on writing after the promotion
    kept.save()
    record.update(r, "run-served", lambda s: {**s, "seconds": 4.2})
    assert r.ttl("retrain:run:run-served") == -1
    assert record.get(r, "run-served")["seconds"] == 4.2
    other.save()
    assert 0 < r.ttl("retrain:run:run-rejected") <= record.KEPT  # not served: 30 days
    assert record.keep(r, "run-served")  # keeping again changes nothing
    assert not record.keep(r, "run-gone")  # expired (or never run): nothing to keep


def test_an_update_starts_a_record_none_was_written_for_and_lists_the_run(r):
    written = record.update(r, "run-late", lambda s: {**s, "steps": [*s["steps"], {"name": "x"}]})
    assert written["status"] == "running" and written["steps"] == [{"name": "x"}]
    assert record.get(r, "run-late") == written
    assert [s["run_id"] for s in record.recent_runs(r).runs] == ["run-late"]


def test_concurrent_updates_each_land(r):
    """The steps of a cluster's workflow change one record from pods of their own."""
    import threading

    RunRecorder(r, RunRequest("/data/a", run_id="run-c"))
    barrier = threading.Barrier(8)

    def add(n):
        barrier.wait()
        record.update(r, "run-c", lambda s: {**s, "models": {**s["models"], f"m{n}": n}})

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert record.get(r, "run-c")["models"] == {f"m{n}": n for n in range(8)}


def test_an_approval_names_its_authenticated_sender_and_keeps_the_claimed_name_as_a_note():
    from events import make_event

    event = make_event("training.requested", {"uri": "/d", "approves": "run-b",
                                              "approved_by": "the boss", "digest": "d" * 64},
                       source="retrain/approve", id="approve/run-b/1a2b3c4d")
    said = RunRequest.from_event(event, sender="key:0a1b2c3d4e5f").event
    assert said["approved_by"] == "key:0a1b2c3d4e5f" and said["approval_note"] == "the boss"
    unsent = RunRequest.from_event(event).event  # no receiver vouched for it: as it came
    assert unsent["approved_by"] == "the boss" and "approval_note" not in unsent
