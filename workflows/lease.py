"""Run leases: ``retrain:lease:<run_id>`` names the process running a run (``host:pid``, its
token) and is renewed while it goes on, so a run whose owner died can be told from one still
going (``workflows.queue``). A ``core.lease`` lease that takes itself back if it lapsed while
its owner lived (Redis restarted without it): it only says that its owner is alive."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from core.lease import Leases, Renewer
from workflows.errors import WorkflowError

LEASE = "retrain:lease:"
LEASE_SECONDS = 30.0


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this machine that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's: its lease's expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def _leases(client: redis.Redis) -> Leases:
    return Leases(client, LEASE, reclaim=True)


@contextmanager
def run_lease(client: redis.Redis, run_id: str, seconds: float = LEASE_SECONDS) -> Iterator[None]:
    """Hold ``run_id``'s lease while the block runs: renewed every third of ``seconds`` by a
    thread (a Redis error is logged and tried again), released at the end."""
    ms = int(seconds * 1000)
    leases = _leases(client)
    lease = leases.acquire(run_id, ms, token=owner_id())
    if lease is None:
        raise WorkflowError(f"run {run_id} is already held by {leases.holder(run_id)}")
    renewer = Renewer(leases, ms, name=f"lease {LEASE}{run_id}")
    renewer.add(lease)
    try:
        yield
    finally:
        renewer.close()  # before the release: a renewal after it would take the lease back
        try:
            leases.release(lease)
        except redis.RedisError:  # it expires on its own
            pass


def held_by_the_living(client: redis.Redis, run_id: str) -> bool:
    owner = _leases(client).holder(run_id)
    return owner is not None and _owner_alive(owner)
