"""Run leases: ``retrain:lease:<run_id>`` names the process running a run and is renewed while
it goes on, so a run whose owner died can be told from one still going (``workflows.queue``)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)
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


class Lease:
    """``retrain:lease:<run_id>`` held while the run goes on, renewed by a thread."""

    def __init__(self, client: redis.Redis, run_id: str, seconds: float = LEASE_SECONDS) -> None:
        self._r = client
        self.key = LEASE + run_id
        self._seconds = seconds
        self._stop = threading.Event()

    @contextmanager
    def held(self) -> Iterator[None]:
        self._r.set(self.key, owner_id(), px=int(self._seconds * 1000))
        thread = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            try:
                self._r.delete(self.key)
            except redis.RedisError:  # it expires on its own
                pass

    def _renew(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                self._r.set(self.key, owner_id(), px=int(self._seconds * 1000))
            except redis.RedisError as exc:  # keep trying: the run goes on meanwhile
                log.warning("could not renew the lease of %s: %s", self.key, exc)


def held_by_the_living(client: redis.Redis, run_id: str) -> bool:
    owner = client.get(LEASE + run_id)
    return owner is not None and _owner_alive(owner.decode() if isinstance(owner, bytes) else owner)
