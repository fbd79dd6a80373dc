"""Scoring a SavedModel on a dataset's held-out test split."""

from __future__ import annotations

import threading

import tensorflow as tf

from dataset.records import test_arrays
from repository.layout import ARRAYS_SIGNATURE, OUTPUT
from services.selector.errors import EvaluationError

KEEP_SPLITS = 2  # the newest test splits: the candidate's and, rarely, the champion's


class Evaluator:
    """Accuracy of a model on a test split; scores are memoised per (model, dataset)."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], float] = {}
        self._splits: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}
        self._lock = threading.Lock()

    def accuracy(self, model_uri: str, dataset_uri: str) -> float:
        key = (model_uri, dataset_uri)
        with self._lock:
            if key in self._scores:
                return self._scores[key]
            if dataset_uri not in self._splits:
                while len(self._splits) >= KEEP_SPLITS:  # a long-running stack sees many versions
                    self._splits.pop(next(iter(self._splits)))
                self._splits[dataset_uri] = test_arrays(dataset_uri)
            images, labels = self._splits[dataset_uri]
        try:
            model = tf.saved_model.load(model_uri)
            predict = model.signatures[ARRAYS_SIGNATURE]
        except (OSError, KeyError, ValueError) as exc:
            raise EvaluationError(f"cannot load model {model_uri}: {exc}") from exc
        correct = 0
        for start in range(0, int(images.shape[0]), 2048):
            batch = images[start : start + 2048, ..., 0]
            probs = predict(images=batch)[OUTPUT]
            predicted = tf.argmax(probs, axis=1)
            correct += int(tf.reduce_sum(tf.cast(predicted == labels[start : start + 2048], tf.int32)))
        score = correct / max(int(images.shape[0]), 1)
        with self._lock:
            self._scores[key] = score
        return score
