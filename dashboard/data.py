"""What the dashboard shows, read from Redis alone (runs, progress, the champion and its
history, decisions, events, dead letters): each query a few round trips, whatever the
number of runs kept (pages by offset over the runs' sorted set)."""

from __future__ import annotations

import json
from typing import Any

import redis

from core import redact

RUNS = "retrain:runs"
PAGE = 20
MAX_PAGE = 100


def _json(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else None


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
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(RUNS)
        pipe.zrevrange(RUNS, offset, offset + limit - 1)
        total, ids = pipe.execute()
    summaries = client.mget([f"retrain:run:{i.decode()}" for i in ids]) if ids else []
    rows = [run_row(s) for s in map(_json, summaries) if s]
    nxt = offset + limit if offset + limit < total else None
    return {"total": total, "offset": offset, "limit": limit, "next": nxt, "runs": rows}


def run(client: redis.Redis, run_id: str, decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One run: its summary (steps with their times), each model's progress curve, and
    ``decisions`` (those on its models)."""
    summary = _json(client.get(f"retrain:run:{run_id}"))
    if summary is None:
        return None
    curves = {}
    for model in (summary.get("parameters") or {}).get("models", []):
        key = f"retrain:progress:{run_id}:{model}"
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.lrange(key + ":history", 0, -1)
            state, history = pipe.execute()
        fields = {k.decode(): v.decode() for k, v in state.items()}
        points = [json.loads(p) for p in history]
        curves[model] = {"state": fields.get("state"), "latest": _json(fields.get("latest")),
                         "points": [{k: p.get(k) for k in ("step", "loss", "accuracy")}
                                    for p in points]}
    return {"summary": summary, "curves": curves, "decisions": decisions}


def events(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest events the stack received or sent (the timeline's event entries)."""
    out = []
    for _id, fields in client.xrevrange("retrain:timeline", count=limit * 3):
        if fields[b"kind"] != b"event":
            continue
        detail = json.loads(fields[b"detail"])
        out.append({"at": float(fields[b"at"]), "type": fields[b"step"].decode(), **detail})
        if len(out) >= limit:
            break
    return out


def dead_letters(client: redis.Redis) -> list[dict[str, Any]]:
    from events.dead_letters import list_dead

    return [{"stream": d.stream, "entry_id": d.entry_id, "reason": d.reason,
             "origin": d.origin, "type": d.event_type, "event_id": d.event_id,
             "source": d.source, "died_at": d.died_at} for d in list_dead(client)]


def clean(value: Any) -> Any:
    """``value`` with every secret the process knows of masked (URLs with passwords too)."""
    return json.loads(redact.redact(json.dumps(value)))
