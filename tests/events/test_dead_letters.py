"""Dead letters: an outbox entry the receiver keeps failing on (a 500 for that event only)
stops blocking the others after a bounded number of attempts; an unreachable receiver is an
outage, never a dead letter; ``retrain events dead-letters ls|replay`` shows them and puts
them back (a 401 after a key rotation, fixed, then replayed and delivered)."""

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from core.http import BackgroundServer, bind
from events import make_event
from events.dead_letters import list_dead, replay
from events.dedup import Deduplicator
from events.outbox import Outbox
from events.sinks import HttpSink, RedisStreamSink
from retrain.cli import app
from tests.conftest import free_port
from workflows.trigger import create_app

pytestmark = pytest.mark.integration


def _event(n):
    return make_event("dataset.updated", {"uri": f"/data/{n}"}, source="test/dead", id=f"d{n}")


def _choking_receiver(received):
    """Answers 500 to the event with id d1 (the receiver chokes on it), 202 to the rest."""
    app = FastAPI()

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        if request.headers.get("ce-id") == "d1":
            return JSONResponse({"error": "boom"}, status_code=500)
        received.append(request.headers["ce-id"])
        return JSONResponse({"accepted": [request.headers["ce-id"]]}, status_code=202)

    return BackgroundServer(app, bind("127.0.0.1", 0, "receiver"), "receiver").start()


def test_an_event_the_receiver_keeps_failing_on_is_dead_lettered_and_the_rest_go_on(r):
    received = []
    server = _choking_receiver(received)
    try:
        outbox = Outbox(r, HttpSink(server.url + "/events", attempts=1), "choke", max_attempts=3)
        for n in range(3):
            outbox.put(_event(n))
        for _ in range(6):
            outbox.deliver_once(batch=10)
    finally:
        server.stop()
    assert received == ["d0", "d2"] and outbox.pending() == 0
    [letter] = list_dead(r)
    assert letter.event_id == "d1" and letter.stream == "retrain:outbox:choke:dead"
    assert letter.reason.startswith("failed 3 times, last: cannot deliver event to")
    assert "HTTP 500" in letter.reason
    assert r.hlen("retrain:outbox:choke:attempts") == 0  # nothing left behind


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_or_unavailable_answer_is_an_outage_not_a_dead_letter(r, status):
    """An ingress in front of a receiver that is down answers 502/503/504: waited out."""
    app = FastAPI()

    @app.post("/events")
    async def events() -> JSONResponse:
        return JSONResponse({"error": "upstream down"}, status_code=status)

    server = BackgroundServer(app, bind("127.0.0.1", 0, "gateway"), "gateway").start()
    try:
        outbox = Outbox(r, HttpSink(server.url + "/events", attempts=1), "gw", max_attempts=2)
        outbox.put(_event(0))
        for _ in range(4):
            assert outbox.deliver_once() is False
    finally:
        server.stop()
    assert outbox.pending() == 1 and list_dead(r) == []


def test_an_unreachable_receiver_is_an_outage_not_a_dead_letter(r):
    outbox = Outbox(r, HttpSink(f"http://127.0.0.1:{free_port()}/events", attempts=1,
                                timeout=1), "down", max_attempts=2)
    outbox.put(_event(0))
    for _ in range(5):
        assert outbox.deliver_once() is False
    assert outbox.pending() == 1 and list_dead(r) == []


def test_a_refused_event_is_replayed_from_the_command_line_once_the_key_is_fixed(r, settings,
                                                                                  monkeypatch):
    received = []
    app_ = create_app(Deduplicator(r, 600, namespace="dead-test"), received.append, ("new-key",))
    server = BackgroundServer(app_, bind("127.0.0.1", 0, "receiver"), "receiver").start()
    monkeypatch.setenv("RETRAIN_HOME", str(settings.home))
    monkeypatch.setenv("RETRAIN_REDIS_URL", settings.redis_url)
    try:
        old = Outbox(r, HttpSink(server.url + "/events", api_key="old-key"), "rotated")
        old.put(_event(7))
        assert old.deliver_once() is True  # refused: out of the way at once
        assert old.pending() == 0

        listed = CliRunner().invoke(app, ["events", "dead-letters", "ls", "--json"])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.stdout)
        assert row["event_id"] == "d7" and "rejected with 401" in row["reason"]

        unknown = CliRunner().invoke(app, ["events", "dead-letters", "replay", "1-1"])
        assert "no dead letter 1-1" in str(unknown.exception)  # main() prints it, exits 2
        not_dead = CliRunner().invoke(app, ["events", "dead-letters", "ls", "--stream",
                                            "retrain:events"])
        assert "retrain:events is not a dead-letter stream" in str(not_dead.exception)
        assert len(list_dead(r)) == 1  # nothing moved

        replayed = CliRunner().invoke(app, ["events", "dead-letters", "replay", row["entry_id"]])
        assert replayed.exit_code == 0, replayed.output
        assert "1 dead letter(s) replayed" in replayed.output
        assert list_dead(r) == []

        fixed = Outbox(r, HttpSink(server.url + "/events", api_key="new-key"), "rotated")
        assert fixed.pending() == 1
        fixed.deliver_once()
        assert [e.id for e in received] == ["d7"] and fixed.pending() == 0
    finally:
        server.stop()


def test_a_candidate_dead_lettered_by_the_selector_goes_back_on_its_stream(r):
    trained = make_event("model.trained", {
        "run_id": "run-1", "model_type": "cnn", "model_uri": "/m", "dataset_uri": "/d",
        "dataset_digest": "x", "val_accuracy": 0.5, "val_loss": 1.0, "seconds": 1.0},
        source="test/dead", id="t1")
    RedisStreamSink(r, "retrain:events").send(trained)
    [(entry_id, fields)] = r.xrange("retrain:events")
    r.xadd("retrain:events:dead", {**fields, b"reason": b"handling failed 5 times"})
    r.xdel("retrain:events", entry_id)

    [letter] = replay(r)

    assert letter.origin == "retrain:events" and letter.event_type == "dev.retrain.model.trained"
    [(_id, again)] = r.xrange("retrain:events")
    assert b"reason" not in again and json.loads(again[b"event"])["id"] == "t1"
    assert r.xlen("retrain:events:dead") == 0
