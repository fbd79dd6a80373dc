"""Bursts coalesce: a newer dataset.updated for a source replaces the request waiting for it,
and every replaced one is recorded ``coalesced`` naming the run covering it; locally (the run
queue, a runner training meanwhile) and on a cluster (the supersede step under the source's
mutex). Real Redis, the test trainer."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from rich.console import Console

from events import make_event
from events.codec import encode
from events.payloads import DatasetUpdated, Origin, RunParameters, TrainingRequested
from tests.conftest import wait_for, write_dataset
from tests.workflows.argo import Argo
from workflows import coalesce, record
from workflows.coalesce import lock_name, mutex_name, source_key
from workflows.queue import PROCESSING, QUEUE, SOURCES, RunQueue
from workflows.runner import LocalRunner, RunRequest
from workflows.trigger import Trigger

pytestmark = pytest.mark.integration

PARAMS = RunParameters(models=("cnn",), steps_per_epoch=1, validation="off")


def _updated(uri: str, n: int, origin: Origin | None = None):
    return make_event("dataset.updated", DatasetUpdated(
        uri=uri, digest=f"{n:064x}", trigger="watcher", parameters=PARAMS,
        origin=origin or Origin(kind="folder", folder=uri)),
        source="retrain/watcher/fashion-mnist", id=f"fashion-mnist@{n}:{n:016x}")


def test_the_source_is_the_branch_the_bucket_the_folder_else_the_uri():
    git = {"type": "dev.retrain.dataset.updated",
           "origin": {"kind": "git", "repository": "https://g/x.git", "ref": "refs/heads/main"}}
    assert source_key(git, "/h/git/abc/data") == "git:https://g/x.git#main"
    bucket = {"type": "dev.retrain.dataset.updated", "origin": {"kind": "bucket", "bucket": "b"}}
    assert source_key(bucket, "/h/s3/t/data/") == "bucket:b@/h/s3/t/data"
    assert source_key({"type": "dev.retrain.dataset.updated"}, "file:///d/") == "uri:/d"
    assert source_key({"type": "dev.retrain.training.requested"}, "/d") is None
    assert mutex_name("git:https://g/x.git#main").startswith("retrain-source-")
    assert len(mutex_name("x" * 500)) == len("retrain-source-") + 20


def test_a_newer_change_replaces_the_queued_one_and_another_source_is_not_touched(r):
    queue = RunQueue(r)
    first = RunRequest.from_event(_updated("/data/a", 1))
    newer = RunRequest.from_event(_updated("/data/a", 2))
    other = RunRequest.from_event(_updated("/data/b", 3))
    asked = RunRequest.from_event(make_event("training.requested", TrainingRequested(
        uri="/data/a"), source="retrain/cli", id="t-1"))
    for request in (first, other, asked):
        assert queue.put(request) is None
    assert queue.put(newer).run_id == first.run_id
    queued = queue.queued()
    assert [q.run_id for q in queued] == [newer.run_id, other.run_id, asked.run_id]  # in place
    assert queued[0].covered == 1
    assert coalesce.cover(r, newer.run_id) == [{
        "run_id": first.run_id, "event_id": first.event_id, "time": first.event["time"],
        "digest": first.event["digest"]}]
    kept = record.get(r, first.run_id)
    assert kept["status"] == "coalesced" and kept["covered_by"] == newer.run_id
    assert kept["event"]["id"] == first.event_id  # the event it carried
    assert first.run_id in [s["run_id"] for s in record.recent_runs(r, 0, 10).runs]


def test_a_long_burst_keeps_the_queued_request_small_and_the_covering_run_names_itself(r):
    """Each replacement costs the same: the covered runs wait in a list, not in the request."""
    queue = RunQueue(r)
    requests = [RunRequest.from_event(_updated("/data/a", n)) for n in range(1, 302)]
    sizes = []
    for request in requests:
        queue.put(request)
        sizes.append(len(r.hget(SOURCES, "folder:/data/a")))
    assert max(sizes[1:]) - min(sizes[1:]) <= 10  # the ids' and count's digits, no more
    [queued] = queue.queued()
    assert queued.run_id == requests[-1].run_id and queued.covered == 300
    r.delete(f"retrain:run:{requests[5].run_id}")  # a trigger died before writing it
    covers = coalesce.cover(r, queued.run_id)
    assert [c["run_id"] for c in covers] == [q.run_id for q in requests[:-1]]
    for request in requests[:-1]:
        kept = record.get(r, request.run_id)
        assert kept["status"] == "coalesced" and kept["covered_by"] == queued.run_id


def test_a_request_resumed_behind_a_newer_one_of_its_source_is_covered_by_it(r):
    """At most one waits per source, after a runner's death too."""
    queue = RunQueue(r)
    first = RunRequest.from_event(_updated("/data/a", 1))
    queue.put(first)
    taken = queue.take(timeout=1)  # its runner dies with it: no lease
    record.RunRecorder(r, taken.request)
    newer = RunRequest.from_event(_updated("/data/a", 2))
    queue.put(newer)
    lines = queue.recover(grace=0)
    assert [q.run_id for q in queue.queued()] == [newer.run_id]
    assert r.llen(PROCESSING) == 0 and len(lines) == 1
    kept = record.get(r, first.run_id)
    assert kept["status"] == "coalesced" and kept["covered_by"] == newer.run_id
    assert [c["run_id"] for c in coalesce.cover(r, newer.run_id)] == [first.run_id]


def test_a_replaced_event_whose_record_was_lost_is_recorded_by_the_run_covering_it(
        r, settings, redis_handle, dataset):
    """The trigger dies between the swap and the record: the covering run writes it."""
    queue = RunQueue(r)
    first = RunRequest.from_event(_updated(str(dataset), 1))
    newer = RunRequest.from_event(_updated(str(dataset), 2))
    queue.put(first)
    queue.put(newer)
    r.delete(f"retrain:run:{first.run_id}")  # as if never written
    taken = queue.take(timeout=1)
    summary = LocalRunner(settings, r, redis_handle.url, lambda e: None, Console(quiet=True)).run(
        replace(taken.request, parameters=RunParameters(models=(), validation="off")))
    assert summary["covers"][0]["run_id"] == first.run_id
    kept = record.get(r, first.run_id)
    assert kept["status"] == "coalesced" and kept["covered_by"] == newer.run_id


@pytest.mark.slow
def test_fifty_changes_while_a_run_trains_give_at_most_two_runs_and_every_one_is_accounted(
        r, settings, redis_handle, standin_trainer, tmp_path):
    data = write_dataset(tmp_path / "data")
    other = write_dataset(tmp_path / "other", seed=9)
    trigger = Trigger(r, judge=lambda e: None)
    runner = LocalRunner(settings, r, redis_handle.url, lambda e: None, Console(quiet=True))
    queue, stop, summaries = RunQueue(r), threading.Event(), []

    def loop():
        while not stop.is_set():
            taken = queue.take(timeout=0.2)
            if taken is not None:
                summaries.append(runner.run(taken.request))
                queue.done(taken)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        events = [_updated(str(data), n) for n in range(1, 51)]
        trigger.dispatch(events[0])
        wait_for(lambda: r.llen(PROCESSING) == 1)  # the first run is training
        for event in events[1:]:
            trigger.dispatch(event)
        trigger.dispatch(_updated(str(other), 99))  # another source: its own run
        wait_for(lambda: r.llen(QUEUE) == 0 and r.llen(PROCESSING) == 0, seconds=120)
    finally:
        stop.set()
        worker.join()
    trained = [s for s in summaries if s["data"] == str(data)]
    assert 1 <= len(trained) <= 2 and all(s["status"] == "succeeded" for s in trained)
    assert [s["data"] for s in summaries].count(str(other)) == 1
    by_event = {s["event_id"]: s for s in record.recent_runs(r, 0, 100).runs}
    last = trained[-1]
    for event in events:
        kept = by_event[event.id]  # every one of the fifty is a run
        if kept["status"] == "coalesced":
            assert kept["covered_by"] == last["run_id"]  # the run that trained covers it
        else:
            assert kept["run_id"] in {s["run_id"] for s in trained}
    covered = {c["event_id"] for c in record.get(r, last["run_id"])["covers"]}
    assert covered == {e.id for e in events} - {s["event_id"] for s in trained}


def test_a_waiting_workflow_finds_a_newer_change_and_ends_coalesced(
        settings, r, redis_handle, tmp_path):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    push = Origin(kind="git", repository="https://git.example/fm/data.git", ref="refs/heads/main")
    runs = []
    for n in (1, 2, 3):
        event = _updated(str(data), n, push)
        _, body = encode(event, "structured")
        argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", f"retrain-w{n}", **{
            "data-uri": str(data), "event-id": event.id, "event": body.decode(),
            "parameters": PARAMS.model_dump_json()})
        plan = argo.run("plan")  # each notes its event before waiting for the mutex
        assert plan.code == 0, plan.stderr
        runs.append((argo, plan.outputs))
    assert {o["mutex"] for _, o in runs} == {lock_name(str(data))}  # locked by path
    for argo, outputs in runs[:2]:  # they get the mutex in turn: a newer one is noted
        step = argo.run("supersede", source=outputs["source"])
        assert step.code == 0, step.stderr
        assert step.outputs == {"coalesced": "true", "covered-by": "retrain-w3"}
    newest = runs[2][0].run("supersede", source=runs[2][1]["source"])
    assert newest.outputs == {"coalesced": "false", "covered-by": ""}
    for name in ("retrain-w1", "retrain-w2"):
        kept = record.get(r, name)
        assert kept["status"] == "coalesced" and kept["covered_by"] == "retrain-w3"
    covers = record.get(r, "retrain-w3")["covers"]
    assert [c["run_id"] for c in covers] == ["retrain-w1", "retrain-w2"]
    assert record.get(r, "retrain-w3")["status"] == "running"  # it goes on to check-cache


def _planned(settings, redis_handle, tmp_path, name, event, data):
    """A Workflow of the template whose plan step has run (its run noted, its record begun)."""
    _, body = encode(event, "structured")
    argo = Argo(settings.home, redis_handle.url, tmp_path / "pods", name, **{
        "data-uri": str(data), "event-id": event.id, "event": body.decode(),
        "parameters": PARAMS.model_dump_json()})
    plan = argo.run("plan", here=True)
    assert plan.code == 0, plan.stderr
    return argo, plan.outputs


def _ended(r, run_id, status):
    record.update(r, run_id, lambda s: {**s, "status": status, "error": f"it {status}"})


def test_a_later_run_that_ended_without_reading_the_source_covers_nothing(
        settings, r, redis_handle, tmp_path):
    """A later Workflow stopped, failed or past its deadline before it ran: the earlier one
    runs (it would otherwise be covered by a run that never trains)."""
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    early, outputs = _planned(settings, redis_handle, tmp_path, "retrain-e1",
                              _updated(str(data), 1), data)
    _planned(settings, redis_handle, tmp_path, "retrain-e2", _updated(str(data), 2), data)
    _ended(r, "retrain-e2", "failed")
    step = early.run("supersede", here=True, source=outputs["source"])
    assert step.outputs == {"coalesced": "false", "covered-by": ""}, step.stderr
    assert record.get(r, "retrain-e1")["status"] == "running"
    assert record.get(r, "retrain-e1")["steps"][-1]["name"] == "supersede"


def test_a_future_dated_event_that_ran_does_not_cover_a_later_push(
        settings, r, redis_handle, tmp_path):
    """Changes are ordered by arrival, not by the sender's clock."""
    from datetime import UTC, datetime, timedelta

    data = write_dataset(settings.home / "data" / "fashion-mnist")
    ahead = replace(_updated(str(data), 1),
                    time=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    future, outputs = _planned(settings, redis_handle, tmp_path, "retrain-f1", ahead, data)
    assert future.run("supersede", here=True, source=outputs["source"]).outputs[
        "coalesced"] == "false"
    _ended(r, "retrain-f1", "succeeded")
    later, outputs = _planned(settings, redis_handle, tmp_path, "retrain-f2",
                              _updated(str(data), 2), data)
    step = later.run("supersede", here=True, source=outputs["source"])
    assert step.outputs == {"coalesced": "false", "covered-by": ""}, step.stderr


def test_a_failed_supersede_records_the_run_failed(settings, r, redis_handle, tmp_path):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    argo, outputs = _planned(settings, redis_handle, tmp_path, "retrain-x1",
                             _updated(str(data), 1), data)
    r.delete(coalesce.NEWEST + coalesce.hashed(outputs["source"]))
    r.set(coalesce.NEWEST + coalesce.hashed(outputs["source"]), "not a sorted set")
    step = argo.run("supersede", here=True, source=outputs["source"])
    assert step.code != 0
    kept = record.get(r, "retrain-x1")
    assert kept["status"] == "failed" and "WRONGTYPE" in kept["error"]
    assert kept["steps"][-1]["name"] == "supersede"


def test_a_persons_request_waits_for_the_mutex_of_its_data_path(
        settings, r, redis_handle, tmp_path):
    data = write_dataset(settings.home / "data" / "fashion-mnist")
    push = Origin(kind="git", repository="https://git.example/fm/data.git", ref="refs/heads/main")
    _, pushed = _planned(settings, redis_handle, tmp_path, "retrain-p1",
                         _updated(str(data), 1, push), data)
    asked = make_event("training.requested", TrainingRequested(uri=f"file://{data}/"),
                       source="retrain/cli", id="t-1")
    _, requested = _planned(settings, redis_handle, tmp_path, "retrain-p2", asked, data)
    assert requested["source"] == "" and pushed["source"].startswith("git:")
    assert requested["mutex"] == pushed["mutex"] == lock_name(str(data))
