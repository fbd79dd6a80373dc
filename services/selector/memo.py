"""What the selector remembers across processes, by model content: scores and judgements.

A score depends only on the model's files and the test split, so it is kept in Redis by
(digest of the model's files, dataset) and a model is loaded (TensorFlow imported, graph run)
only for a pair never scored. The digest is computed here from the files the selector
would load, never taken from the event: a sender cannot borrow another model's score.

A judgement (a rejection against one champion, on one test split, under one policy) is kept
too: the same candidate content against the same champion gets the recorded decision again,
"already judged", without even looking up its score.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

import redis

from core.tf_start import configure
from events import Event, EventType, make_event
from events.payloads import ModelTrained
from services.selector.champion import PREFIX, Champion
from repository.digest import model_digest

KEEP_SECONDS = 90 * 86400  # each record is kept this long after it was last written


class Scoring(Protocol):
    def accuracy(self, model_uri: str, dataset_uri: str) -> float: ...


class LazyEvaluator:
    """The TensorFlow evaluator, imported and built the first time a model must be loaded."""

    def __init__(self) -> None:
        self._evaluator: Scoring | None = None

    def accuracy(self, model_uri: str, dataset_uri: str) -> float:
        if self._evaluator is None:
            configure()  # before TensorFlow is first imported in this process
            from services.selector.evaluate import Evaluator

            self._evaluator = Evaluator()
        return self._evaluator.accuracy(model_uri, dataset_uri)


def content(model_uri: str) -> str | None:
    """The digest of a model's files, or None when they cannot be read (then nothing is
    remembered about it)."""
    try:
        return model_digest(model_uri)
    except OSError:
        return None


class Scores:
    """``evaluator``'s accuracies, remembered by model content and test split."""

    def __init__(self, client: redis.Redis, scope: str, evaluator: Scoring) -> None:
        self._r, self._evaluator = client, evaluator
        self._key = f"{PREFIX}{hashlib.sha256(scope.encode()).hexdigest()[:12]}:scores"

    def accuracy(self, model_uri: str, dataset_uri: str) -> float:
        digest = content(model_uri)
        field = f"{digest}|{dataset_uri}"
        if digest is not None:
            known = self._r.hget(self._key, field)
            if known is not None:
                return float(known)
        score = self._evaluator.accuracy(model_uri, dataset_uri)
        if digest is not None:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.hset(self._key, field, repr(score))
                pipe.expire(self._key, KEEP_SECONDS)
                pipe.execute()
        return score


class Judgements:
    def __init__(self, client: redis.Redis, scope: str, policy: object) -> None:
        self._r, self._policy = client, repr(policy)
        self._key = f"{PREFIX}{hashlib.sha256(scope.encode()).hexdigest()[:12]}:judged"

    def _field(self, trained: ModelTrained, champion: Champion) -> str | None:
        digest = content(trained.model_uri)
        if digest is None:
            return None
        return f"{digest}|{champion.generation}|{trained.dataset_uri}|{self._policy}"

    def remember(self, trained: ModelTrained, champion: Champion | None,
                 decision: Event) -> None:
        """Keep a rejection of ``trained`` against ``champion``."""
        field = self._field(trained, champion) if champion is not None else None
        if field is None or decision.type is not EventType.MODEL_REJECTED:
            return
        record = {"data": decision.data.model_dump(mode="json"), "run_id": trained.run_id,
                  "champion_version": champion.version}  # type: ignore[union-attr]
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(self._key, field, json.dumps(record))
            pipe.expire(self._key, KEEP_SECONDS)
            pipe.execute()

    def recall(self, trained: ModelTrained, champion: Champion | None,
               source: str) -> Event | None:
        """The recorded decision on the same content against ``champion``, as ``trained``'s
        own decision (its run, variant and model), or None if it was never judged."""
        field = self._field(trained, champion) if champion is not None else None
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
