"""The local run queue and run leases: no run lost when the process running it dies.

A run request waits in ``retrain:queue``; a runner takes it with ``BLMOVE`` into
``retrain:queue:processing`` (so it is never only in memory) and removes it when the run has
ended. While a run goes on, its lease (``workflows.lease``) names the owner and is renewed
every few seconds. A run whose lease is gone (its owner was killed) is found by ``recover``:
a queued request goes back to the head of the queue as a new run that names the one it
resumes; a run record left ``running`` is closed as failed with the reason.

A request with a source (``workflows.coalesce``) replaces the one queued for the same source,
in its place, the latest state winning; one running does not block it (so at most one runs
and one waits per source). The replaced request is recorded ``coalesced``, naming the request
that replaced it, which lists it (and all it covered) in ``covers``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace

import redis

from workflows import coalesce, record
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

# Queue a request for a source: in place of the one queued for it if that is still ARGV[2]
# (what the caller read and built the new request from), else appended if none is queued and
# none was read. Any other state (the one read was taken, another replaced it) returns
# {0, what is queued now} and the caller builds again from that. cjson only reads.
_COALESCE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, raw in ipairs(items) do
  local ok, req = pcall(cjson.decode, raw)
  if ok and type(req) == 'table' and req['source'] == ARGV[1] then
    if raw ~= ARGV[2] then return {0, raw} end
    redis.call('LSET', KEYS[1], i - 1, ARGV[3])
    return {1, raw}
  end
end
if ARGV[2] ~= '' then return {0, ''} end
redis.call('RPUSH', KEYS[1], ARGV[3])
return {1, ''}
"""


@dataclass(frozen=True)
class Taken:
    request: RunRequest
    raw: bytes


class RunQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._requeue = client.register_script(_REQUEUE)
        self._coalesce = client.register_script(_COALESCE)

    def put(self, request: RunRequest) -> RunRequest | None:
        """Queue ``request``; returns the request it replaced (recorded ``coalesced``), if any.

        Crash safety: the swap comes first and the replaced request's record second. The
        request queued in its place carries that record (``pending``) until the runner
        starts it, and the runner writes it then unless it is there already: a process that
        dies between the two leaves the replaced event recorded by the runner, a process that
        does not leaves it written twice (the second write keeps the first), and never not
        at all. The other order could record as ``coalesced`` a request a runner had just
        taken, or, dying after the record, leave both the record and the queued request."""
        if request.source is None:
            self._r.rpush(QUEUE, request.to_json())
            return None
        expected = self._queued_for(request.source)
        while True:
            replaced = RunRequest.from_json(expected) if expected else None
            built = request if replaced is None else replace(
                request, covers=coalesce.covers_after(replaced),
                pending=coalesce.coalesced_summary(replaced, request.run_id))
            done, found = self._coalesce(keys=[QUEUE], args=[request.source, expected or "",
                                                              built.to_json()])
            if done:
                break
            expected = found.decode() if isinstance(found, bytes) else found
        if replaced is not None:
            for pending in filter(None, (replaced.pending, built.pending)):
                record.create_if_absent(self._r, pending)  # the one before, should it be lost
            log.info("run request %s replaced %s (a newer change of %s); %d covered",
                     request.run_id, replaced.run_id, request.source, len(built.covers))
        return replaced

    def _queued_for(self, source: str) -> str | None:
        for raw in self._r.lrange(QUEUE, 0, -1):
            try:
                if json.loads(raw).get("source") == source:
                    return raw.decode() if isinstance(raw, bytes) else raw
            except ValueError:
                continue
        return None

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
