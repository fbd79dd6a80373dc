"""A run's lease names its owner while the run goes on: taken back if Redis lost it, never
taken from another owner, gone when the run has ended."""

import os
import socket

import pytest

from tests.conftest import wait_for
from workflows.errors import WorkflowError
from workflows.lease import LEASE, held_by_the_living, run_lease

pytestmark = pytest.mark.integration


def test_a_run_lease_names_this_process_while_held(r):
    with run_lease(r, "run-n"):
        assert r.get(LEASE + "run-n").decode() == f"{socket.gethostname()}:{os.getpid()}"
        assert held_by_the_living(r, "run-n")
    assert not held_by_the_living(r, "run-n")


def test_a_run_lease_redis_lost_is_taken_back_by_the_next_renewal(r):
    with run_lease(r, "run-x", seconds=0.3):
        r.delete(LEASE + "run-x")  # Redis restarted without it: the run still goes on
        wait_for(lambda: r.exists(LEASE + "run-x"), 3)
        assert held_by_the_living(r, "run-x")
    assert not r.exists(LEASE + "run-x")


def test_a_run_held_by_another_owner_is_not_taken_over(r):
    r.set(LEASE + "run-o", "elsewhere:1", ex=30)
    with (pytest.raises(WorkflowError, match="run run-o is already held by elsewhere:1"),
          run_lease(r, "run-o")):
        pass
    assert r.get(LEASE + "run-o") == b"elsewhere:1"  # left to its owner
