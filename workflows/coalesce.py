"""Bursts coalesce: a newer ``dataset.updated`` for a source replaces the run still waiting
for it, the latest state winning, and the run it replaced is recorded ``coalesced``, naming
the run that covers it.

What "the same source" is: ``workflows.source``.

Locally the run queue replaces the waiting request (``workflows.queue``); on a cluster one
Workflow per source works at a time (an Argo mutex named by ``mutex_name``), and each
Workflow notes its event as the newest of its source before waiting for the mutex
(``note``): one that gets the mutex and finds a newer event noted ends ``coalesced``
(``supersede``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from workflows import record
from workflows.source import hashed, mutex_name, source_key

__all__ = ["mutex_name", "source_key"]  # the source's key and mutex, for the steps

log = logging.getLogger(__name__)
NEWEST = "retrain:source:"  # per source (by its hash): run ids by their event's time
NOTED = 100  # runs noted per source
NOTED_SECONDS = 30 * 86400


def cover_entry(request: record.RunRequest) -> dict[str, Any]:
    """How a covering run's summary lists a run it covers."""
    said = request.event or {}
    return {"run_id": request.run_id, "event_id": request.event_id, "time": said.get("time"),
            "digest": said.get("digest")}


def covers_after(replaced: record.RunRequest) -> tuple[dict[str, Any], ...]:
    """What the request replacing ``replaced`` covers: all it covered, and itself."""
    return (*replaced.covers, cover_entry(replaced))


def coalesced_summary(replaced: record.RunRequest, covered_by: str) -> dict[str, Any]:
    """The record of a request replaced before it ran: a run like any other, with the event
    it carried, ``coalesced`` and naming the run that covers it."""
    now = round(time.time(), 3)
    return {"run_id": replaced.run_id, "trigger": replaced.trigger,
            "event_id": replaced.event_id, "data": replaced.data_uri,
            "parameters": replaced.parameters.model_dump(), "status": "coalesced",
            "covered_by": covered_by, "reason": _why(replaced.source, covered_by),
            "error": _why(replaced.source, covered_by),
            "started_at": now, "ended_at": now, "seconds": 0.0, "steps": [], "models": {},
            "cache": None, "dataset_uri": None, "digest": (replaced.event or {}).get("digest"),
            "event": replaced.event, "source": replaced.source,
            **({"covers": list(replaced.covers)} if replaced.covers else {})}


def _why(source: str | None, covered_by: str) -> str:
    return f"coalesced: a newer change of {source} replaced it; run {covered_by} covers it"


def point_covers(client: redis.Redis, covering: str, covers: tuple[dict[str, Any], ...]) -> None:
    """Every run ``covering`` covers names it (a chain of replacements named each replacer)."""
    for entry in covers:
        record.repoint(client, entry["run_id"], covering)


# the cluster: one Workflow per source at a time -----------------------------------------------
def note(client: redis.Redis, key: str, run_id: str, event_time: float) -> None:
    """Note a Workflow's event as one of its source's (before it waits for the mutex)."""
    name = NEWEST + hashed(key)
    with client.pipeline() as pipe:
        pipe.zadd(name, {run_id: event_time})
        pipe.zremrangebyrank(name, 0, -NOTED - 1)
        pipe.expire(name, NOTED_SECONDS)
        pipe.execute()


def newest(client: redis.Redis, key: str) -> str | None:
    """The run whose event is the newest noted for ``key`` (by the event's time, then id)."""
    found = client.zrevrange(NEWEST + hashed(key), 0, 0)
    return (found[0].decode() if isinstance(found[0], bytes) else found[0]) if found else None


def supersede(client: redis.Redis, run_id: str, key: str) -> str | None:
    """In a Workflow that got its source's mutex: the run covering it when a newer event of
    the source is noted (its record then says ``coalesced``, the covering run's lists it and
    all it covered), else None (the run goes on). Again after a retry: the same answer."""
    summary = record.get(client, run_id) or {}
    covering = summary.get("covered_by") if summary.get("status") == "coalesced" else None
    covering = covering or newest(client, key)
    if covering is None or covering == run_id:
        return None
    own = tuple(summary.get("covers") or ())
    entry = {"run_id": run_id, "event_id": summary.get("event_id"),
             "time": (summary.get("event") or {}).get("time"), "digest": summary.get("digest")
             or (summary.get("event") or {}).get("digest")}
    # this run's record first: should the step die before the covering run lists it, its
    # record names its covering run (and a retry of the step lists it then)
    record.end_coalesced(client, run_id, covering, f"coalesced: a newer change of {key} is "
                         f"run {covering}, which covers it")
    record.add_covers(client, covering, (*own, entry))
    point_covers(client, covering, own)
    log.info("run %s coalesced: run %s has a newer change of %s", run_id, covering, key)
    return covering
