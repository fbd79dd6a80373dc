"""The selector's judgements, remembered across processes by model content.

A judgement (a rejection against one champion, on one test split and one pinned evaluation
set, under one policy) is kept: the same candidate content against the same champion, with
the same pinned set, gets the recorded decision again,
"already judged", without even looking up its score (``services.selector.scores``). The
content is the digest of the model's files, computed here, never taken from the event.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from events import Event, EventType, make_event
from events.payloads import ModelTrained
from services.selector.champion import Champion, scoped_key
from services.selector.scores import KEEP_SECONDS, content


class Judgements:
    def __init__(self, client: redis.Redis, scope: str, policy: object) -> None:
        self._r, self._policy = client, repr(policy)
        self._key = scoped_key(scope, "judged")

    def _field(self, trained: ModelTrained, champion: Champion, pinned: str | None) -> str | None:
        digest = content(trained.model_uri)
        if digest is None:
            return None
        return (f"{digest}|{champion.generation}|{trained.dataset_uri}|{pinned or '-'}|"
                f"{self._policy}")

    def remember(self, trained: ModelTrained, champion: Champion | None, pinned: str | None,
                 decision: Event) -> None:
        """Keep a rejection of ``trained`` against ``champion`` with the pinned evaluation set
        whose digest is ``pinned`` (None: none)."""
        field = self._field(trained, champion, pinned) if champion is not None else None
        if field is None or decision.type is not EventType.MODEL_REJECTED:
            return
        record = {"data": decision.data.model_dump(mode="json"), "run_id": trained.run_id,
                  "champion_version": champion.version}  # type: ignore[union-attr]
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(self._key, field, json.dumps(record))
            pipe.expire(self._key, KEEP_SECONDS)
            pipe.execute()

    def recall(self, trained: ModelTrained, champion: Champion | None, pinned: str | None,
               source: str) -> Event | None:
        """The recorded decision on the same content against ``champion`` with the same pinned
        set, as ``trained``'s own decision (its run, variant and model), or None if it was
        never judged."""
        field = self._field(trained, champion, pinned) if champion is not None else None
        raw = self._r.hget(self._key, field) if field is not None else None
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        data = {**record["data"], "run_id": trained.run_id, "model_type": trained.model_type,
                "model_uri": trained.model_uri,
                "reason": (f"already judged against champion version "
                           f"{record['champion_version']} on this test split (run "
                           f"{record['run_id']}): {record['data']['reason']}")}
        return make_event(EventType.MODEL_REJECTED, data, source=source,
                          id=f"{trained.run_id}/{trained.model_type}/decision")
