"""A Redis stream of what happened, in order: the demo's timeline and ``retrain status``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

STREAM = "retrain:timeline"


@dataclass(frozen=True)
class Entry:
    at: float
    kind: str
    step: str
    detail: dict[str, Any]


def record(client: redis.Redis, kind: str, step: str = "", **detail: Any) -> None:
    """Append one entry (an event seen, or a step finished) to the timeline."""
    client.xadd(
        STREAM,
        {"at": repr(time.time()), "kind": kind, "step": step, "detail": json.dumps(detail)},
        maxlen=10_000,
        approximate=True,
    )


def _entry(fields: dict[bytes, bytes]) -> Entry:
    return Entry(at=float(fields[b"at"]), kind=fields[b"kind"].decode(),
                 step=fields[b"step"].decode(), detail=json.loads(fields[b"detail"]))


def read(client: redis.Redis, since: float = 0.0) -> list[Entry]:
    """Every entry from ``since`` on, oldest first."""
    return [e for e in (_entry(fields) for _id, fields in client.xrange(STREAM)) if e.at >= since]


def recent(client: redis.Redis, limit: int, kind: str | None = None,
           scanned: int | None = None) -> list[Entry]:
    """The newest ``limit`` entries (of ``kind`` only, if given), newest first, found among the
    newest ``scanned`` entries (all ``limit`` when no kind is asked for; else three times as
    many): one round trip, however long the timeline."""
    scanned = scanned or (limit if kind is None else limit * 3)
    found = []
    for _id, fields in client.xrevrange(STREAM, count=scanned):
        if kind is not None and fields[b"kind"].decode() != kind:
            continue
        found.append(_entry(fields))
        if len(found) >= limit:
            break
    return found
