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


def read(client: redis.Redis, since: float = 0.0) -> list[Entry]:
    entries = []
    for _id, fields in client.xrange(STREAM):
        at = float(fields[b"at"])
        if at < since:
            continue
        entries.append(
            Entry(
                at=at,
                kind=fields[b"kind"].decode(),
                step=fields[b"step"].decode(),
                detail=json.loads(fields[b"detail"]),
            )
        )
    return entries
