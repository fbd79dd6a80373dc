"""Scoring a SavedModel on a dataset's held-out test split: accuracy overall and per class;
and the one way retrain asks a SavedModel for its class probabilities outside the model
server (``predictor``: the selector's scores, the data gate's champion, ``retrain
reproduce``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from dataset.idx import NUM_CLASSES
from dataset.records import test_arrays
from repository.layout import ARRAYS_SIGNATURE, OUTPUT
from services.selector.errors import EvaluationError
from services.selector.policy import Score

KEEP_SPLITS = 2  # the test splits used last: the candidate's and the pinned evaluation set
BATCH = 2048


def predictor(model_uri: str) -> Callable[[Any], np.ndarray]:
    """A SavedModel's class probabilities ([n, 10]) for images as its array signature takes
    them ([n, 28, 28] pixels in [0, 255], a tensor or an array), ``BATCH`` at a time, the
    model loaded once. Raises ``EvaluationError`` when the model cannot be loaded."""
    try:
        signature = tf.saved_model.load(model_uri).signatures[ARRAYS_SIGNATURE]
    except (OSError, KeyError, ValueError) as exc:
        raise EvaluationError(f"cannot load model {model_uri}: {exc}") from exc

    def probabilities(images: Any) -> np.ndarray:
        parts = [signature(images=tf.cast(images[start:start + BATCH], tf.float32))[OUTPUT].numpy()
                 for start in range(0, int(images.shape[0]), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, NUM_CLASSES), np.float32)

    return probabilities


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
        score = score_of(predictor(model_uri)(images[..., 0]).argmax(axis=1), labels)
        with self._lock:
            self._scores[key] = score
        return score
