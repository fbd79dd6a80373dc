import json
import re

import pytest
from fastapi.testclient import TestClient

from events import make_event
from events.codec import encode
from events.dedup import Deduplicator
from workflows.trigger import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def received():
    return []


@pytest.fixture
def client(r, received):
    return TestClient(create_app(Deduplicator(r, 60), received.append, api_keys=("sekret",)))


def _post(client, event, key="sekret", mode="binary"):
    headers, body = encode(event, mode)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return client.post("/events", content=body, headers=headers)


def test_accepts_and_dispatches_once(client, received):
    event = make_event("dataset.updated", {"uri": "/d"}, source="s")
    assert _post(client, event).status_code == 202
    again = _post(client, event, mode="structured")
    assert again.status_code == 202 and again.json()["duplicates"] == [event.id]
    assert [e.id for e in received] == [event.id]


def test_api_key_required_when_configured(client, received):
    event = make_event("dataset.updated", {"uri": "/d"}, source="s")
    assert _post(client, event, key=None).status_code == 401
    assert _post(client, event, key="wrong").status_code == 401
    assert received == []


def test_bad_requests_are_400_and_oversized_413(client):
    headers = {"Authorization": "Bearer sekret", "content-type": "application/cloudevents+json"}
    r = client.post("/events", content=b"{bad", headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/events", content=json.dumps({"specversion": "1.0"}).encode(), headers=headers)
    assert r.status_code == 400 and "'id'" in r.json()["error"] and "'type'" in r.json()["error"]
    r = client.post("/events", content=b"x" * 70_000, headers=headers)
    assert r.status_code == 413


@pytest.mark.parametrize(("parameters", "named"), [
    ({"cache_policy": "max-age=forever"}, "cache_policy"),
    ({"train_cache": "min-change=0.1"}, "train_cache"),  # the ingestion cache's, not training's
    ({"train_cache": "sometimes"}, "train_cache"),
    ({"force": "maybe"}, "force"),
])
def test_a_run_request_with_an_unknown_cache_policy_is_refused(client, received, parameters,
                                                               named):
    headers = {"Authorization": "Bearer sekret", "content-type": "application/cloudevents+json"}
    body = {"specversion": "1.0", "id": "x1", "source": "me", "type": "dev.retrain.training.requested",
            "data": {"uri": "/d", "parameters": parameters}}
    r = client.post("/events", content=json.dumps(body).encode(), headers=headers)
    assert r.status_code == 400 and named in r.json()["error"]
    assert received == []


def test_liveness_answers_on_its_own_path(r):
    client = TestClient(create_app(Deduplicator(r, 60, "live"), lambda event: None))
    assert client.get("/livez").status_code == 200


def test_a_failing_narration_never_costs_the_event(r):
    from events import make_event
    from events.payloads import DatasetUpdated
    from workflows.queue import RunQueue
    from workflows.trigger import Trigger

    told = []

    def observe(event):
        told.append(event.id)
        raise RuntimeError("the terminal went away")

    Trigger(r, lambda e: None, observe=observe).dispatch(make_event(
        "dataset.updated", DatasetUpdated(uri="/d", trigger="manual"), source="me", id="n1"))
    assert told == ["n1"]
    taken = RunQueue(r).take(timeout=1)
    assert taken is not None and taken.request.event_id == "n1"


def test_an_approval_names_the_key_that_sent_it_and_each_approval_is_its_own_event(
        r, redis_handle, tmp_path):
    """`retrain approve RUN --by NAME --events-url URL`, twice (the first approval's workflow
    failed, say): two events, neither dropped as the other's duplicate; each run request
    names as its approver the API key the trigger authenticated, NAME only as a note."""
    from typer.testing import CliRunner

    from core.auth import identity
    from core.http import BackgroundServer, bind
    from events.payloads import RunParameters
    from events.receiver import FromSender
    from retrain.cli import app
    from workflows import record
    from workflows.queue import RunQueue
    from workflows.trigger import Trigger

    record.save(r, {"run_id": "run-b", "status": "blocked", "data": "/d", "digest": "d" * 64,
                    "parameters": RunParameters().model_dump(mode="json"), "steps": [],
                    "models": {}}, started_at=1000.0)
    trigger = Trigger(r, lambda e: None)
    server = BackgroundServer(create_app(Deduplicator(r, 60, "approvals"),
                                         FromSender(trigger.dispatch), api_keys=("k-approver",)),
                              bind("127.0.0.1", 0, "trigger"), "trigger").start()
    env = {"RETRAIN_HOME": str(tmp_path), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_API_KEYS": "k-approver"}
    try:
        for _ in range(2):
            done = CliRunner().invoke(app, ["approve", "run-b", "--by", "grace",
                                            "--events-url", server.url + "/events"], env=env)
            assert done.exit_code == 0, done.output
            assert identity("k-approver") in done.output and "'grace' kept as a note" in done.output
    finally:
        server.stop()
    queue = RunQueue(r)
    requests = [queue.take(timeout=1).request for _ in range(2)]
    ids = [q.event_id for q in requests]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"approve/run-b/[0-9a-f]{8}", i) for i in ids)
    for request in requests:
        assert request.event["approves"] == "run-b"
        assert request.event["approved_by"] == identity("k-approver")
        assert request.event["approval_note"] == "grace"
