"""The selector's scores, remembered across processes by model content.

A score (accuracy, overall and per class) depends only on the model's files and the test
split, so it is kept in Redis by (digest of the model's files, dataset) and a model is loaded
(TensorFlow imported, graph run) only for a pair never scored. The digest is computed here
from the files the selector would load, never taken from the event: a sender cannot borrow
another model's score. What the selector decided is remembered beside them
(``services.selector.judgements``).
"""

from __future__ import annotations

import json
from typing import Protocol

import redis

from core.tf_start import configure
from repository.digest import model_digest
from services.selector.champion import scoped_key
from services.selector.policy import Score

KEEP_SECONDS = 90 * 86400  # each record is kept this long after it was last written


class Scoring(Protocol):
    def score(self, model_uri: str, dataset_uri: str) -> Score: ...


class LazyEvaluator:
    """The TensorFlow evaluator, imported and built the first time a model must be loaded."""

    def __init__(self) -> None:
        self._evaluator: Scoring | None = None

    def score(self, model_uri: str, dataset_uri: str) -> Score:
        if self._evaluator is None:
            configure()  # before TensorFlow is first imported in this process
            from services.selector.evaluate import Evaluator

            self._evaluator = Evaluator()
        return self._evaluator.score(model_uri, dataset_uri)


def content(model_uri: str) -> str | None:
    """The digest of a model's files, or None when they cannot be read (then nothing is
    remembered about it)."""
    try:
        return model_digest(model_uri)
    except OSError:
        return None


def _remembered(raw: bytes | None) -> Score | None:
    """A recorded score; None for none, or for one recorded before per-class scores and
    their counts were."""
    if raw is None:
        return None
    try:
        known = json.loads(raw)
        return Score(float(known["accuracy"]), tuple(float(x) for x in known["per_class"]),
                     tuple(int(x) for x in known["counts"]),
                     tuple(int(x) for x in known["predicted"]))
    except (ValueError, TypeError, KeyError):
        return None


class Scores:
    """``evaluator``'s scores, remembered by model content and test split."""

    def __init__(self, client: redis.Redis, scope: str, evaluator: Scoring) -> None:
        self._r, self._evaluator = client, evaluator
        self._key = scoped_key(scope, "scores")

    def score(self, model_uri: str, dataset_uri: str) -> Score:
        digest = content(model_uri)
        field = f"{digest}|{dataset_uri}"
        if digest is not None:
            known = _remembered(self._r.hget(self._key, field))
            if known is not None:
                return known
        score = self._evaluator.score(model_uri, dataset_uri)
        if digest is not None:
            record = json.dumps({"accuracy": score.accuracy, "per_class": list(score.per_class),
                                 "counts": list(score.counts), "predicted": list(score.predicted)})
            with self._r.pipeline(transaction=False) as pipe:
                pipe.hset(self._key, field, record)
                pipe.expire(self._key, KEEP_SECONDS)
                pipe.execute()
        return score
