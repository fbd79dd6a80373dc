"""The run queue keeps a taken request in Redis until its run has ended; a run whose owner
died is resumed (queued request) or closed with the reason (run record left running)."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from workflows import record
from workflows.lease import LEASE, run_lease
from workflows.queue import MAX_ATTEMPTS, PROCESSING, QUEUE, RunQueue
from workflows.runner import RunRecorder, RunRequest

pytestmark = pytest.mark.integration


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _record(r, request):
    RunRecorder(r, request)  # the summary a runner writes as it starts: status running
    return request


def test_a_taken_request_stays_in_redis_until_its_run_has_ended(r):
    queue = RunQueue(r)
    queue.put(RunRequest("/data/a", run_id="run-a"))
    taken = queue.take(timeout=1)
    assert taken.request.run_id == "run-a"
    assert r.llen(QUEUE) == 0 and r.llen(PROCESSING) == 1  # a crash here loses nothing
    queue.done(taken)
    assert r.llen(PROCESSING) == 0
    assert queue.take(timeout=0.1) is None


def test_a_run_whose_runner_died_is_resumed_as_a_new_run_and_the_old_one_closed(r):
    queue = RunQueue(r)
    queue.put(RunRequest("/data/a", run_id="run-a", event_id="ev-1"))
    taken = queue.take(timeout=1)
    _record(r, taken.request)
    r.set(LEASE + "run-a", f"{socket.gethostname()}:{_dead_pid()}", ex=30)

    lines = queue.recover(grace=0)

    resumed = RunRequest.from_json(r.lindex(QUEUE, 0))
    assert resumed.run_id != "run-a" and resumed.resumes == "run-a" and resumed.attempt == 2
    assert resumed.event_id == "ev-1" and resumed.data_uri == "/data/a"
    assert r.llen(PROCESSING) == 0
    old = record.get(r, "run-a")
    assert old["status"] == "failed"
    assert old["error"] == f"interrupted: its runner died; resumed as {resumed.run_id}"
    assert lines == [f"run-a: {old['error']}"]


def test_a_run_held_by_a_living_owner_is_left_alone(r):
    queue = RunQueue(r)
    queue.put(RunRequest("/data/a", run_id="run-a"))
    taken = queue.take(timeout=1)
    _record(r, taken.request)
    with run_lease(r, "run-a"):
        assert queue.recover(grace=0) == []
    assert r.llen(PROCESSING) == 1 and r.llen(QUEUE) == 0
    assert record.get(r, "run-a")["status"] == "running"


def test_a_request_that_killed_its_runner_too_often_is_closed_not_resumed(r):
    queue = RunQueue(r)
    queue.put(RunRequest("/data/a", run_id="run-c", attempt=MAX_ATTEMPTS, resumes="run-b"))
    _record(r, queue.take(timeout=1).request)
    queue.recover(grace=0)
    assert r.llen(QUEUE) == 0 and r.llen(PROCESSING) == 0
    error = record.get(r, "run-c")["error"]
    assert error.startswith(f"interrupted {MAX_ATTEMPTS} times")


def test_a_run_left_running_by_a_killed_process_is_closed_with_the_reason(r):
    _record(r, RunRequest("/data/a", run_id="run-oneshot"))  # `retrain run`, then SIGKILL
    finished = RunRecorder(r, RunRequest("/data/b", run_id="run-done"))
    finished.summary["status"] = "succeeded"
    finished.save()

    RunQueue(r).recover(grace=0)

    assert record.get(r, "run-oneshot")["error"] == (
        "interrupted: the process running it stopped (its lease is gone)")
    assert record.get(r, "run-done")["status"] == "succeeded"


def test_a_clusters_run_is_its_workflows_not_a_dead_local_runs(r):
    """A `retrain up` sharing the cluster's Redis: a Workflow's run holds no local lease."""
    from workflows.cluster_run import WorkflowRun

    with WorkflowRun(r, "retrain-0123456789abcdef0123").step("fingerprint"):
        pass
    assert record.get(r, "retrain-0123456789abcdef0123")["status"] == "running"
    RunQueue(r).recover(grace=0)
    assert record.get(r, "retrain-0123456789abcdef0123")["status"] == "running"


def test_a_lease_is_renewed_while_held_and_removed_after(r):
    with run_lease(r, "run-l", seconds=0.3):
        time.sleep(0.5)  # longer than the lease: only renewal keeps it
        assert r.exists(LEASE + "run-l")
    assert not r.exists(LEASE + "run-l")


def test_an_old_request_without_attempt_fields_is_read_as_a_first_attempt():
    raw = json.dumps({"data_uri": "/d", "parameters": {}, "trigger": "cli", "event_id": None,
                      "run_id": "run-old"})
    request = RunRequest.from_json(raw)
    assert request.attempt == 1 and request.resumes is None


def test_two_processes_recovering_at_once_resume_a_dead_run_once(r):
    queue = RunQueue(r)
    queue.put(RunRequest("/data/a", run_id="run-a"))
    _record(r, queue.take(timeout=1).request)
    barrier = threading.Barrier(4)
    lines = []

    def recover():
        barrier.wait()
        lines.extend(RunQueue(r).recover(grace=0))

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.llen(QUEUE) == 1 and r.llen(PROCESSING) == 0
    assert len([line for line in lines if "resumed as" in line]) == 1
