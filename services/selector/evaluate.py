"""Scoring a SavedModel on a dataset's held-out test split: accuracy overall and per class."""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from dataset.idx import NUM_CLASSES
from dataset.records import test_arrays
from repository.layout import ARRAYS_SIGNATURE, OUTPUT
from services.selector.errors import EvaluationError
from services.selector.policy import Score

KEEP_SPLITS = 2  # the test splits used last: the candidate's and the pinned evaluation set
BATCH = 2048


def score_of(predicted: np.ndarray, labels: np.ndarray, classes: int = NUM_CLASSES) -> Score:
    """Accuracy, and each true class's accuracy (its recall; 0 for a class the split lacks,
    for every model alike)."""
    total = np.bincount(labels, minlength=classes)[:classes]
    right = np.bincount(labels[predicted == labels], minlength=classes)[:classes]
    per_class = tuple(float(r / t) if t else 0.0 for r, t in zip(right, total, strict=True))
    guessed = np.bincount(predicted, minlength=classes)[:classes]
    return Score(float(right.sum() / max(int(labels.shape[0]), 1)), per_class,
                 tuple(int(t) for t in total), tuple(int(g) for g in guessed))


class Evaluator:
    """Scores of a model on a test split, memoised per (model, dataset)."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], Score] = {}
        self._splits: dict[str, tuple[tf.Tensor, np.ndarray]] = {}  # least recently used first
        self._lock = threading.Lock()

    def _split(self, dataset_uri: str) -> tuple[tf.Tensor, np.ndarray]:
        """The test split's images and labels (the caller holds the lock)."""
        if dataset_uri in self._splits:
            self._splits[dataset_uri] = self._splits.pop(dataset_uri)  # used last
            return self._splits[dataset_uri]
        try:
            images, labels = test_arrays(dataset_uri)
        except (OSError, KeyError, ValueError, tf.errors.OpError) as exc:
            raise EvaluationError(f"cannot read the test split of {dataset_uri}: {exc}") from exc
        while len(self._splits) >= KEEP_SPLITS:  # a long-running stack sees many versions
            self._splits.pop(next(iter(self._splits)))
        self._splits[dataset_uri] = (images, labels.numpy())
        return self._splits[dataset_uri]

    def score(self, model_uri: str, dataset_uri: str) -> Score:
        key = (model_uri, dataset_uri)
        with self._lock:
            if key in self._scores:
                return self._scores[key]
            images, labels = self._split(dataset_uri)
        try:
            model = tf.saved_model.load(model_uri)
            predict = model.signatures[ARRAYS_SIGNATURE]
        except (OSError, KeyError, ValueError) as exc:
            raise EvaluationError(f"cannot load model {model_uri}: {exc}") from exc
        predicted = [tf.argmax(predict(images=images[start : start + BATCH, ..., 0])[OUTPUT],
                               axis=1).numpy()
                     for start in range(0, int(images.shape[0]), BATCH)]
        score = score_of(np.concatenate(predicted) if predicted else np.zeros(0, np.int64),
                         labels)
        with self._lock:
            self._scores[key] = score
        return score
