"""The outbox on real Redis against a real receiver (the trigger app) on 127.0.0.1 that is
down, comes up, and refuses; and across a restart of the process holding the outbox."""

import socket
import time

import pytest

from core.http import BackgroundServer, bind
from events import make_event
from events.dedup import Deduplicator
from events.outbox import Outbox
from events.sinks import HttpSink
from workflows.trigger import create_app

pytestmark = pytest.mark.integration


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receiver(r, port, received, api_keys=()):
    app = create_app(Deduplicator(r, 600, namespace="outbox-test"), received.append, api_keys)
    return BackgroundServer(app, bind("127.0.0.1", port, "receiver"), "receiver").start()


def _event(n):
    return make_event("dataset.updated", {"uri": f"/data/{n}"}, source="test/outbox", id=f"e{n}")


def _wait(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_wait_out_a_sink_outage_and_arrive_in_order(r):
    port = _port()
    sink = HttpSink(f"http://127.0.0.1:{port}/events", attempts=1, timeout=2)
    outbox = Outbox(r, sink, "t1", first_backoff=0.05, max_backoff=0.2).start()
    try:
        for n in range(5):
            outbox.put(_event(n))  # returns at once: the receiver is down
        _wait(lambda: outbox.failures >= 3)
        assert outbox.pending() == 5
        received = []
        server = _receiver(r, port, received)
        try:
            _wait(lambda: outbox.pending() == 0)
            assert [e.id for e in received] == [f"e{n}" for n in range(5)]
        finally:
            server.stop()
    finally:
        outbox.stop()


def test_an_outbox_backing_off_a_long_while_stops_at_once_when_asked(r):
    with socket.socket() as taken:  # bound, never listening: refused for as long as it is open
        taken.bind(("127.0.0.1", 0))
        sink = HttpSink(f"http://127.0.0.1:{taken.getsockname()[1]}/events", attempts=1,
                        timeout=2)
        outbox = Outbox(r, sink, "t-stop", first_backoff=30.0, max_backoff=60.0)
        outbox.put(_event(0))
        outbox.start()
        try:
            _wait(lambda: outbox.failures >= 1)  # now waiting 30 s before the next try
        finally:
            started = time.monotonic()
            outbox.stop(timeout=10)
        assert time.monotonic() - started < 2
    assert outbox.pending() == 1  # kept for the next process


def test_backoffs_that_make_no_sense_are_refused_when_the_outbox_is_made(r):
    sink = HttpSink("http://127.0.0.1:9/events", attempts=1)
    with pytest.raises(ValueError, match="cap 0.1 must be at least the first wait 1"):
        Outbox(r, sink, "t-bad", first_backoff=1.0, max_backoff=0.1)


def test_a_restarted_process_delivers_what_its_predecessor_left(r):
    port = _port()
    sink = HttpSink(f"http://127.0.0.1:{port}/events", attempts=1, timeout=2)
    first = Outbox(r, sink, "t2", first_backoff=0.05, max_backoff=0.1).start()
    for n in range(3):
        first.put(_event(n))
    _wait(lambda: first.failures >= 1)
    first.stop()  # the process dies with three events undelivered
    received = []
    server = _receiver(r, port, received)
    second = Outbox(r, sink, "t2", first_backoff=0.05).start()
    try:
        _wait(lambda: second.pending() == 0)
        assert sorted(e.id for e in received) == ["e0", "e1", "e2"]
    finally:
        second.stop()
        server.stop()


def test_a_refused_event_is_dead_lettered_and_does_not_block_the_rest(r):
    port = _port()
    received = []
    server = _receiver(r, port, received, api_keys=("right",))
    wrong = Outbox(r, HttpSink(f"http://127.0.0.1:{port}/events", api_key="wrong", attempts=1),
                   "t3", first_backoff=0.05).start()
    try:
        wrong.put(_event(1))
        _wait(lambda: wrong.pending() == 0)
        [dead] = wrong.dead_letters()
        assert "rejected with 401" in dead["reason"] and '"e1"' in dead["event"]
        assert received == []
    finally:
        wrong.stop()
        server.stop()


def test_a_duplicate_delivery_is_dropped_by_the_receiver(r):
    port = _port()
    received = []
    server = _receiver(r, port, received)
    outbox = Outbox(r, HttpSink(f"http://127.0.0.1:{port}/events", attempts=1), "t4").start()
    try:
        outbox.put(_event(7))
        outbox.put(_event(7))  # at-least-once: a resend after a lost acknowledgement
        _wait(lambda: outbox.pending() == 0)
        assert [e.id for e in received] == ["e7"]
        assert outbox.delivered == 2
    finally:
        outbox.stop()
        server.stop()
