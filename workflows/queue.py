"""The local run queue and run leases: no run lost when the process running it dies.

A run request waits in ``retrain:queue``; a runner takes it with ``BLMOVE`` into
``retrain:queue:processing`` (so it is never only in memory) and removes it when the run has
ended. While a run goes on, its lease (``workflows.lease``) names the owner and is renewed
every few seconds. A run whose lease is gone (its owner was killed) is found by ``recover``:
a queued request goes back to the head of the queue as a new run that names the one it
resumes; a run record left ``running`` is closed as failed with the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import redis

from workflows import record
from workflows.cluster_run import RUNNER
from workflows.lease import held_by_the_living
from workflows.runner import RunRequest, new_run_id

log = logging.getLogger(__name__)
QUEUE = "retrain:queue"  # run requests, oldest first, for the local runner
PROCESSING = "retrain:queue:processing"  # taken by a runner, not yet ended
MAX_ATTEMPTS = 3  # a request whose runner died this often is not resumed again
RECENT_RUNS = 500  # how far back ``recover`` looks for runs left running

# Move a dead runner's request back to the head of the queue as its resumed run, only if it is
# still in the processing list (another process may have recovered it a moment ago).
_REQUEUE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('LPUSH', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Taken:
    request: RunRequest
    raw: bytes


class RunQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._requeue = client.register_script(_REQUEUE)

    def put(self, request: RunRequest) -> None:
        self._r.rpush(QUEUE, request.to_json())

    def take(self, timeout: float) -> Taken | None:
        """The oldest request, now in the processing list (None after ``timeout`` seconds)."""
        raw = self._r.blmove(QUEUE, PROCESSING, timeout, "LEFT", "RIGHT")
        if raw is None:
            return None
        return Taken(RunRequest.from_json(raw), raw)

    def done(self, taken: Taken) -> None:
        self._r.lrem(PROCESSING, 1, taken.raw)

    # after a crash -----------------------------------------------------------------------------
    def recover(self, grace: float = 1.0) -> list[str]:
        """Put back every taken request whose runner is dead (as a new run resuming it) and
        close runs left ``running`` by a dead owner; returns what was done, one line each."""
        done = []
        suspects = [Taken(RunRequest.from_json(raw), raw)
                    for raw in self._r.lrange(PROCESSING, 0, -1)]
        suspects = [t for t in suspects if not held_by_the_living(self._r, t.request.run_id)]
        if suspects:
            time.sleep(grace)  # a request taken a moment ago gets its lease right after
        for taken in suspects:
            request = taken.request
            if held_by_the_living(self._r, request.run_id):
                continue
            if request.attempt >= MAX_ATTEMPTS:
                resumed = None
                reason = (f"interrupted {request.attempt} times (its runner died each time); "
                          "not resumed again")
            else:
                resumed = replace(request, run_id=new_run_id(), attempt=request.attempt + 1,
                                  resumes=request.run_id)
                reason = f"interrupted: its runner died; resumed as {resumed.run_id}"
            if not self._requeue(keys=[PROCESSING, QUEUE],
                                 args=[taken.raw, resumed.to_json() if resumed else ""]):
                continue  # another process recovered it first
            record.fail_if_running(self._r, request.run_id, reason)
            done.append(f"{request.run_id}: {reason}")
        done.extend(self._close_abandoned())
        for line in done:
            log.warning("%s", line)
        return done

    def _close_abandoned(self) -> list[str]:
        """Runs recorded ``running`` whose owner is gone (also ``retrain run`` killed)."""
        done = []
        for summary in record.recent_runs(self._r, 0, RECENT_RUNS).runs:
            run_id = summary["run_id"]
            if (summary.get("status") != "running" or summary.get("runner") == RUNNER
                    or held_by_the_living(self._r, run_id)):
                continue  # a cluster's run is the Workflow's: no lease here says it lives
            reason = "interrupted: the process running it stopped (its lease is gone)"
            if record.fail_if_running(self._r, run_id, reason):
                done.append(f"{run_id}: {reason}")
        return done
