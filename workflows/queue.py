"""The local run queue and run leases: no run lost when the process running it dies.

A run request waits in ``retrain:queue``; a runner takes it with ``BLMOVE`` into
``retrain:queue:processing`` (so it is never only in memory) and removes it when the run has
ended. While a run goes on, its lease (``workflows.lease``) names the owner and is renewed
every few seconds. A run whose lease is gone (its owner was killed) is found by ``recover``:
a queued request goes back to the head of the queue as a new run that names the one it
resumes; a run record left ``running`` is closed as failed with the reason.

A request with a source (``workflows.coalesce``) waits in ``retrain:queue:sources`` (source →
request) and holds its place in the queue by a token naming its source; a newer request for the
source replaces it there, in its place, the latest state winning; one running does not block
it (so at most one runs and one waits per source). The replaced request is recorded
``coalesced``, naming the request that replaced it, and its record is appended to the list of
runs that request covers (``coalesce.covers_key``), which moves on with each replacement: a
replacement costs the same however many came before. A request resumed after its runner died
coalesces the same way: behind a newer request of its source it is covered by it.
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
QUEUE = "retrain:queue"  # run requests (or a source's token), oldest first, for the runner
PROCESSING = "retrain:queue:processing"  # taken by a runner, not yet ended
SOURCES = "retrain:queue:sources"  # source -> the request waiting for it
TOKEN = "@"  # a queue entry "@<source>" holds the place of the request SOURCES has for it
MAX_ATTEMPTS = 3  # a request whose runner died this often is not resumed again
RECENT_RUNS = 500  # how far back ``recover`` looks for runs left running

# A dead runner's request leaves the processing list, only if it is still there (another
# process may have recovered it a moment ago), in one step with what takes its place: when a
# newer request of its source waits (still ARGV[3], as the caller read it: else {-1, what
# waits now}), that one covers it and all it covered (ARGV[4], its record ARGV[5] appended
# to its covers list: {2}); else its resumed run (ARGV[6]; "" given up) goes to the head of
# the queue, taking over the runs it covered ({1}).
_RESUME = """
if ARGV[2] ~= '' then
  local now = redis.call('HGET', KEYS[3], ARGV[2])
  if (now or '') ~= ARGV[3] then return {-1, now or ''} end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return {0, ''} end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  for _, mine in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
    redis.call('RPUSH', KEYS[4], mine)
  end
  redis.call('DEL', KEYS[5])
  redis.call('RPUSH', KEYS[4], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
  return {2, ''}
end
if ARGV[6] == '' then return {1, ''} end
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[6]) end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
  redis.call('LPUSH', KEYS[2], ARGV[7])
else
  redis.call('LPUSH', KEYS[2], ARGV[6])
end
return {1, ''}
"""

# Queue a request for a source: in place of the one waiting for it if that is still ARGV[2]
# (what the caller read and built the new request from: "" none), its covers list moved to
# the new request's and the replaced one's record (ARGV[5]) appended; else, none waiting,
# the request waits and its token is queued at the tail. Any other state returns {0, what waits now} and the caller builds again from that.
_PUT = """
local now = redis.call('HGET', KEYS[2], ARGV[1])
if (now or '') ~= ARGV[2] then return {0, now or ''} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if now then
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[4]) end
  redis.call('RPUSH', KEYS[4], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
else
  redis.call('RPUSH', KEYS[1], ARGV[4])
end
return {1, ''}
"""

# A runner took a source's token: the request waiting for it becomes the taken one (in the
# processing list in the token's place). Until then a newer request still replaced it.
_CLAIM = """
local request = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[1])
if request then redis.call('RPUSH', KEYS[1], request) end
return request
"""

# A token left in the processing list by a runner that died before claiming it goes back to
# the head of the queue (if its request still waits), once.
_UNTAKE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) end
return 1
"""


def _text(raw: str | bytes) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _is_token(raw: str | bytes) -> bool:
    return _text(raw).startswith(TOKEN)


@dataclass(frozen=True)
class Taken:
    request: RunRequest
    raw: bytes


class RunQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._resume_script = client.register_script(_RESUME)
        self._put = client.register_script(_PUT)
        self._claim = client.register_script(_CLAIM)
        self._untake = client.register_script(_UNTAKE)

    def put(self, request: RunRequest) -> RunRequest | None:
        """Queue ``request``; returns the request it replaced (recorded ``coalesced``), if
        any.

        Crash safety: the swap and the replaced request's record in the list of runs the new
        request covers are one step, the record itself second; the runner starting the
        covering request writes every record of that list that is missing: a process that
        dies between the two leaves the replaced event recorded by the runner, one that does
        not leaves it written once (the runner's write keeps it), and never not at all."""
        if request.source is None:
            self._r.rpush(QUEUE, request.to_json())
            return None
        expected = self._r.hget(SOURCES, request.source)
        while True:
            replaced = RunRequest.from_json(expected) if expected else None
            built = request if replaced is None else replace(
                request, covered=replaced.covered + 1)
            gone = coalesce.coalesced_summary(replaced, request.run_id) if replaced else None
            done, now = self._put(
                keys=[QUEUE, SOURCES, coalesce.covers_key(replaced.run_id if replaced else ""),
                      coalesce.covers_key(request.run_id)],
                args=[request.source, expected or "", built.to_json(), TOKEN + request.source,
                      json.dumps(gone), record.KEPT])
            if done:
                break
            expected = now or None
        if replaced is not None and gone is not None:
            record.create_if_absent(self._r, gone)
            log.info("run request %s replaced %s (a newer change of %s); %d covered",
                     request.run_id, replaced.run_id, request.source, built.covered)
        return replaced

    def queued(self) -> list[RunRequest]:
        """The requests waiting, in the order they will be taken."""
        waiting = {k.decode() if isinstance(k, bytes) else k: v
                   for k, v in self._r.hgetall(SOURCES).items()}
        found = []
        for raw in self._r.lrange(QUEUE, 0, -1):
            held = waiting.get(_text(raw)[len(TOKEN):]) if _is_token(raw) else raw
            if held:
                found.append(RunRequest.from_json(held))
        return found

    def take(self, timeout: float) -> Taken | None:
        """The oldest request, now in the processing list (None after ``timeout`` seconds)."""
        raw = self._r.blmove(QUEUE, PROCESSING, timeout, "LEFT", "RIGHT")
        if raw is None:
            return None
        if _is_token(raw):
            raw = self._claim(keys=[PROCESSING, SOURCES], args=[raw, _text(raw)[len(TOKEN):]])
            if raw is None:
                return None
        return Taken(RunRequest.from_json(raw), raw)

    def done(self, taken: Taken) -> None:
        self._r.lrem(PROCESSING, 1, taken.raw)

    # after a crash -----------------------------------------------------------------------------
    def recover(self, grace: float = 1.0) -> list[str]:
        """Put back every taken request whose runner is dead (as a new run resuming it,
        coalescing as a newer request would) and close runs left ``running`` by a dead
        owner; returns what was done, one line each."""
        done = []
        taken_raw = self._r.lrange(PROCESSING, 0, -1)
        tokens = [raw for raw in taken_raw if _is_token(raw)]
        suspects = [Taken(RunRequest.from_json(raw), raw)
                    for raw in taken_raw if not _is_token(raw)]
        suspects = [t for t in suspects if not held_by_the_living(self._r, t.request.run_id)]
        if suspects or tokens:
            time.sleep(grace)  # a request taken a moment ago gets its lease (or claim) now
        for token in tokens:
            self._untake(keys=[PROCESSING, QUEUE, SOURCES], args=[token, _text(token)[len(TOKEN):]])
        for taken in suspects:
            if not held_by_the_living(self._r, taken.request.run_id):
                done.extend(self._resume(taken))
        done.extend(self._close_abandoned())
        for line in done:
            log.warning("%s", line)
        return done

    def _resume(self, taken: Taken) -> list[str]:
        """A dead runner's request: covered by a newer request of its source waiting (its
        record then ``coalesced``), else queued again at the head as a run resuming it, or
        given up after MAX_ATTEMPTS; one step each (``_RESUME``)."""
        request = taken.request
        resumed = None if request.attempt >= MAX_ATTEMPTS else replace(
            request, run_id=new_run_id(), attempt=request.attempt + 1, resumes=request.run_id)
        source = request.source or ""
        expected = self._r.hget(SOURCES, source) if source else None
        while True:
            newer = RunRequest.from_json(expected) if expected else None
            outcome, now = self._resume_script(
                keys=[PROCESSING, QUEUE, SOURCES,
                      coalesce.covers_key(newer.run_id if newer else ""),
                      coalesce.covers_key(request.run_id),
                      coalesce.covers_key(resumed.run_id if resumed else "")],
                args=[taken.raw, source, expected or "",
                      replace(newer, covered=newer.covered + 1 + request.covered).to_json()
                      if newer else "",
                      json.dumps(coalesce.coalesced_summary(request, newer.run_id))
                      if newer else "", resumed.to_json() if resumed else "",
                      TOKEN + source, record.KEPT])
            if outcome != -1:
                break
            expected = now or None
        if outcome == 0:
            return []  # another process recovered it first
        if outcome == 2 and newer is not None:
            why = (f"interrupted: its runner died; {coalesce.reason(source, newer.run_id)}")
            record.end_coalesced(self._r, request.run_id, newer.run_id, why)
            return [f"{request.run_id}: {why}"]
        why = (f"interrupted: its runner died; resumed as {resumed.run_id}" if resumed else
               f"interrupted {request.attempt} times (its runner died each time); "
               "not resumed again")
        record.fail_if_running(self._r, request.run_id, why)
        return [f"{request.run_id}: {why}"]

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
