"""Bursts coalesce: a newer ``dataset.updated`` for a source replaces the run still waiting
for it, the latest state winning, and the run it replaced is recorded ``coalesced``, naming
the run that covers it.

What "the same source" is: ``workflows.source``.

Locally the run queue replaces the waiting request (``workflows.queue``); the runs a queued
request covers wait in a list of their own (``retrain:covers:<run id>``, their ``coalesced``
records as written), so the queued request stays small however long the burst, and the run
that covers them writes each record it finds missing and names itself in each (``cover``).

On a cluster one Workflow per data path works at a time (an Argo mutex named by
``mutex_name``), and each Workflow notes its run among its source's before waiting for the
mutex (``note``), numbered in the order they arrive (never by the sender's clock). One that
gets the mutex ends ``coalesced`` (``supersede``) only when a run noted after it is still
waiting for the mutex, or has ended having read the source after it (``succeeded`` or
``deferred``); a later run that failed, or was stopped, covers nothing.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from workflows import record
from workflows.source import hashed, lock_name, mutex_name, source_key

__all__ = ["lock_name", "mutex_name", "source_key"]  # the source's key and mutex, for the steps

log = logging.getLogger(__name__)
NEWEST = "retrain:source:"  # per source (by its hash): run ids by arrival; ":n" their counter
COVERS = "retrain:covers:"  # per queued run: the coalesced records of the runs it covers
NOTED = 100  # runs noted per source
NOTED_SECONDS = 30 * 86400
READ_SOURCE = ("succeeded", "deferred")  # a later run that ended so has read the source
BATCH = 200  # records changed per transaction when a run covers many

# Note a run among its source's, numbered by arrival: once (a plan step run again keeps its
# number), the newest NOTED kept. Returns the run's number.
_NOTE = """
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen then return tonumber(seen) end
local n = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], n, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"""


def reason(source: str | None, covered_by: str) -> str:
    """Why a run ended ``coalesced`` (one wording, locally and on a cluster)."""
    return f"coalesced: a newer change of {source} came; run {covered_by} covers it"


def cover_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """How a covering run's summary lists a run it covers (from the covered run's record)."""
    said = summary.get("event") or {}
    return {"run_id": summary["run_id"], "event_id": summary.get("event_id"),
            "time": said.get("time"), "digest": summary.get("digest") or said.get("digest")}


def coalesced_summary(replaced: record.RunRequest, covered_by: str) -> dict[str, Any]:
    """The record of a request replaced before it ran: a run like any other, with the event
    it carried, ``coalesced`` and naming the run that covers it."""
    now = round(time.time(), 3)
    why = reason(replaced.source, covered_by)
    return {"run_id": replaced.run_id, "trigger": replaced.trigger,
            "event_id": replaced.event_id, "data": replaced.data_uri,
            "parameters": replaced.parameters.model_dump(), "status": "coalesced",
            "covered_by": covered_by, "reason": why, "error": why,
            "started_at": now, "ended_at": now, "seconds": 0.0, "steps": [], "models": {},
            "cache": None, "dataset_uri": None, "digest": (replaced.event or {}).get("digest"),
            "event": replaced.event, "source": replaced.source}


# the local queue: what a queued run covers --------------------------------------------------
def covers_key(run_id: str) -> str:
    """The list of the ``coalesced`` records of the runs ``run_id`` covers (the queue moves
    it to the request replacing ``run_id``)."""
    return COVERS + run_id


def cover(client: redis.Redis, covering: str) -> list[dict[str, Any]]:
    """As ``covering`` starts: every run it covers is recorded ``coalesced`` naming it (a
    record the trigger could not write is written now, one written is pointed at it), in
    transactions of ``BATCH`` records; returns the cover entries for its summary."""
    covered = [json.loads(raw) for raw in client.lrange(covers_key(covering), 0, -1)]
    for start in range(0, len(covered), BATCH):
        record.cover_all(client, covering, [{**s, "covered_by": covering}
                                            for s in covered[start:start + BATCH]])
    return [cover_entry(s) for s in covered]


# the cluster: one Workflow per source at a time -----------------------------------------------
def note(client: redis.Redis, key: str, run_id: str) -> int:
    """Note a Workflow's run as its source's latest arrival (before it waits for the mutex);
    returns its number (the same when noted again)."""
    name = NEWEST + hashed(key)
    return int(client.eval(_NOTE, 2, name, name + ":n", run_id, NOTED, NOTED_SECONDS))


def later(client: redis.Redis, key: str, run_id: str) -> list[str]:
    """The runs of ``key`` noted after ``run_id``, the latest first (all noted, when
    ``run_id`` is not among them any more)."""
    name = NEWEST + hashed(key)
    score = client.zscore(name, run_id)
    found = client.zrevrangebyscore(name, "+inf", f"({score}" if score is not None else "-inf")
    return [f.decode() if isinstance(f, bytes) else f for f in found if f != run_id]


def waiting(summary: dict[str, Any]) -> bool:
    """A Workflow's run still waiting for its source's mutex: running, nothing done but
    its plan."""
    return summary.get("status") == "running" and all(
        s.get("name") == "plan" for s in summary.get("steps") or [])


def covering_run(client: redis.Redis, key: str, run_id: str) -> str | None:
    """The latest run noted after ``run_id`` that covers it: still waiting (it reads the
    source once it runs), or ended having read the source after ``run_id`` was noted;
    None when no later run can (none noted, or each failed, was stopped, or is gone)."""
    for candidate in later(client, key, run_id):
        summary = record.get(client, candidate)
        if summary is not None and (waiting(summary) or summary.get("status") in READ_SOURCE):
            return candidate
    return None


def supersede(client: redis.Redis, run_id: str, key: str) -> str | None:
    """In a Workflow that got its source's mutex: the run covering it (``covering_run``),
    its record then ``coalesced`` and listed by the covering run's with all it covered; else
    None (the run goes on). Again after a retry: the same answer."""
    summary = record.get(client, run_id) or {"run_id": run_id}
    covering = summary.get("covered_by") if summary.get("status") == "coalesced" else None
    covering = covering or covering_run(client, key, run_id)
    if covering is None:
        return None
    own = tuple(summary.get("covers") or ())
    # this run's record first: should the step die before the covering run lists it, its
    # record names its covering run (and a retry of the step lists it then)
    record.end_coalesced(client, run_id, covering, reason(key, covering))
    record.add_covers(client, covering, (*own, cover_entry(summary)))
    for entry in own:  # a chain of replacements named each replacer
        record.repoint(client, entry["run_id"], covering)
    log.info("run %s coalesced: run %s has a newer change of %s", run_id, covering, key)
    return covering
