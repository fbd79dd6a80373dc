"""What the dashboard shows, read through the owners of the records it reads (runs:
``workflows.record``; a training's progress: ``services.trainer.progress``; the champion and
its decisions: ``ChampionStore``; what the live guard made of each promoted version:
``services.selector.guard_store``; events: ``core.timeline``; watched sources and outboxes:
the watcher and ``events.outbox``; a version's lineage: ``workflows.lineage``): each view a
few round trips, whatever the number of runs
kept (pages by offset over the runs by time). Every view is masked (``clean``) before it is
served or rendered."""

from __future__ import annotations

import json
from typing import Any

import redis

from core import redact, timeline
from dashboard.errors import RunNotFoundError
from dashboard.state import Dashboard
from events.dead_letters import list_dead
from events.outbox import outbox_depths
from services.ingest_watcher.watcher import watched_sources
from services.selector.champion import ChampionStore
from services.selector.guard_store import guard_states
from services.trainer import progress
from workflows import record
from workflows.lineage import lineage as read_lineage

PAGE = 20  # runs on a page
MAX_PAGE = 100
HISTORY, DECISIONS = 200, 200  # the newest champions and decisions a page shows
EVENTS, MAX_EVENTS = 100, 1000


def clean(value: Any) -> Any:
    """``value`` with every secret the process knows of masked (URLs with passwords too)."""
    return json.loads(redact.redact(json.dumps(value)))


def run_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The few fields of a run the overview lists."""
    cache = summary.get("cache") or {}
    models = summary.get("models") or {}
    trigger = str(summary.get("trigger") or "")
    return {
        "run_id": summary["run_id"], "status": summary.get("status"),
        "trigger": trigger.rsplit("/", 1)[-1] if "/" in trigger else trigger,
        "started_at": summary.get("started_at"), "seconds": summary.get("seconds"),
        "cache": "hit" if cache.get("hit") else ("miss" if cache else None),
        "cache_reason": cache.get("reason"),
        "trained": sorted(m for m, r in models.items() if r.get("status") == "trained"
                          and not r.get("cached")),
        "cached": sorted(m for m, r in models.items() if r.get("cached")),
        "failed": sorted(m for m, r in models.items() if r.get("status") == "failed"),
        "error": summary.get("error"),
    }


def runs(client: redis.Redis, offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
    """The newest runs first, one page (two round trips however many runs are kept)."""
    limit, offset = max(1, min(limit, MAX_PAGE)), max(0, offset)
    page = record.recent_runs(client, offset, limit)
    nxt = offset + limit if offset + limit < page.total else None
    return {"total": page.total, "offset": offset, "limit": limit, "next": nxt,
            "runs": [run_row(s) for s in page.runs]}


def run(dashboard: Dashboard, run_id: str) -> dict[str, Any]:
    """One run: its summary (steps with their times), each model's learning curve, and the
    decisions on its models."""
    summary = record.get(dashboard.client, run_id)
    if summary is None:
        raise RunNotFoundError(run_id, record.KEPT // 86400)
    models = (summary.get("parameters") or {}).get("models", [])
    curves = {model: {"state": found.state, "latest": found.latest,
                      "points": [{k: p.get(k) for k in ("step", "loss", "accuracy")}
                                 for p in found.points]}
              for model, found in progress.all_for(dashboard.client, run_id, models).items()}
    return clean({"summary": summary, "curves": curves,
                  "decisions": with_guard(dashboard.champions,
                                          dashboard.champions.decisions_of(run_id))})


def with_guard(store: ChampionStore, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``decisions`` with, on each promotion, what the live guard made of its version
    (``guard``: watching, settled, rolledback...; one read for them all)."""
    versions = {d["version"] for d in decisions if d.get("type") == "model.promoted"
                and isinstance(d.get("version"), int)}
    states = guard_states(store.client, store.scope, sorted(versions))
    return [{**d, "guard": states[d["version"]]} if d.get("type") == "model.promoted"
            and d.get("version") in states else d for d in decisions]


def champions(store: ChampionStore) -> dict[str, Any]:
    """The served model, since when, what it replaced, the history and the decisions."""
    return clean(_champions(store))


def _champions(store: ChampionStore) -> dict[str, Any]:
    champion = store.get()
    history = store.history()[-HISTORY:]
    decisions = with_guard(store, store.decisions(last=DECISIONS))
    since = None
    if champion is not None:
        since = next((d.get("at") for d in reversed(decisions)
                      if d.get("version") == champion.version
                      and d.get("type") in ("model.promoted", "rollback")), None)
    return {"champion": champion.__dict__ if champion else None, "since": since,
            "replaced": history[-1].__dict__ if history else None,
            "history": [c.__dict__ for c in history], "decisions": decisions}


def lineage(dashboard: Dashboard, version: int) -> dict[str, Any]:
    """Why ``version`` is served (``workflows.lineage``): its decision, model, training,
    dataset, validation, run and the events that caused it; a few reads by key."""
    return clean(read_lineage(dashboard.client, dashboard.champions.scope, version))


def sources(client: redis.Redis) -> list[dict[str, Any]]:
    """The watched sources and the outboxes (registered sets: no scan of the keyspace)."""
    found: list[dict[str, Any]] = [
        {"name": s.get("uri"), "digest": s.get("digest"), "changes": s.get("sequence"),
         "at": s.get("at")} for s in watched_sources(client)]
    found += [{"name": f"outbox {name}", "depth": depth}
              for name, depth in outbox_depths(client).items()]
    return found


def overview(dashboard: Dashboard, offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
    """The overview page's data: the served model, one page of runs, the sources."""
    view = _champions(dashboard.champions)  # masked below, only what is shown
    return clean({"champion": view["champion"], "since": view["since"],
                  "replaced": view["replaced"], "runs": runs(dashboard.client, offset, limit),
                  "sources": sources(dashboard.client)})


def events(client: redis.Redis, limit: int = EVENTS) -> dict[str, Any]:
    """The newest events the stack received or sent (the timeline's event entries), and
    every dead letter."""
    received = [{"at": e.at, "type": e.step, **e.detail}
                for e in timeline.recent(client, limit, kind="event")]
    dead = [{"stream": d.stream, "entry_id": d.entry_id, "reason": d.reason,
             "origin": d.origin, "type": d.event_type, "event_id": d.event_id,
             "source": d.source, "died_at": d.died_at} for d in list_dead(client)]
    return clean({"events": received, "dead_letters": dead})
