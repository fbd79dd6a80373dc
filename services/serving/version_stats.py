"""Live statistics per served version: what the live guard compares a new version with the
one it replaced by (``services.selector.live`` reads them from ``/metrics``), and what the Open
Inference Protocol's statistics extension reports (``GET /v2/models/NAME/stats``, gRPC
``ModelStatistics``).

Every inference request (HTTP v1, v2 and gRPC, through the data plane) is counted once. A model
outcome (``answered``: a 200, or a 500 the model is to blame for, such as answers that are not
finite numbers or the model raising) is counted under the version that gave it; a request
refused at the door before any model judged it (``refused``: 400, 401, 404, 413, 429, a 503 from
a full backlog) is counted apart, under the version served at that moment, and never touches
that version's error figures: a refusal says nothing of the model. On ``/metrics``:

- ``retrain_serving_version_requests_total{version,code}``: model outcomes, by status code
  (200 or 500);
- ``retrain_serving_version_refused_total{version,code}``: refusals at the door, by status code;
- ``retrain_serving_version_latency_seconds{version}``: a histogram of the successful answers'
  latency (``LATENCY_BUCKETS``, fine enough for a p99 ratio);
- ``retrain_serving_predicted_class_total{version,class}``: images of successful answers by
  predicted class (the argmax of the probabilities);
- ``retrain_serving_version_longest_error_streak{version}``: the longest run of consecutive
  model 500s the version has given in this process (never goes down; refusals neither extend
  nor end a run).

The counting is plain arithmetic under one lock, on the event loop (and the model thread, for
model calls): ~3 µs a request. The Prometheus families are built only when scraped;
prometheus_client's own labelled metrics would cost a label lookup and a lock per value
changed, several per request.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)  # and +Inf
KEPT_VERSIONS = 16  # versions whose statistics are kept (the oldest numbers dropped first)
# up to this many images an answer's classes are counted one by one under the lock; past it,
# by numpy's bincount before taking it (measured: 0.6 µs for one image by hand, 1.8 µs by
# bincount; even at 32; 10,000 images held the lock 0.7 ms by hand, ten additions by bincount)
COUNTED_BY_HAND = 32


@dataclass
class VersionRecord:
    """One version's counters since this process first counted it."""

    version: int
    codes: dict[int, int] = field(default_factory=dict)  # status code -> model outcomes
    refused: dict[int, int] = field(default_factory=dict)  # status code -> refusals at the door
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0  # seconds, successful answers
    classes: list[int] | None = None  # images per predicted class (from the first answer)
    streak: int = 0  # consecutive model 500s, now
    longest_streak: int = 0
    images: int = 0  # images answered successfully (Triton's inference_count)
    executions: int = 0  # model calls (Triton's execution_count)
    success_ns: int = 0
    failures: int = 0  # model outcomes other than 200 (refusals are not inferences)
    failure_ns: int = 0
    last_ms: int = 0  # when the last model outcome was given, milliseconds since the epoch

    @property
    def successes(self) -> int:
        return self.codes.get(200, 0)


class VersionStats:
    """The counters of every version answered in this process, and their two readings: the
    Prometheus families (``collect``, a collector of the server's registry) and Triton's
    statistics messages (``model_stats``)."""

    def __init__(self) -> None:
        self._records: dict[int, VersionRecord] = {}
        self._lock = threading.Lock()

    def _record(self, version: int) -> VersionRecord:
        """(Under the lock.) The version's record, started when first needed."""
        record = self._records.get(version)
        if record is None:
            record = self._records[version] = VersionRecord(version)
            if len(self._records) > KEPT_VERSIONS:
                del self._records[min(self._records)]
        return record

    def answered(self, version: int, code: int, seconds: float,
                 probabilities: np.ndarray | None = None) -> None:
        """One model outcome of ``version`` after ``seconds``: a 200 with its
        ``probabilities`` (images x classes, giving its predicted classes), or a 500 the model
        is to blame for."""
        predicted: list[int] | None = None  # each image's class (a small answer)
        counts: list[int] | None = None  # images per class (a large one)
        if code == 200 and probabilities is not None:
            labels = probabilities.argmax(axis=1)
            if len(labels) <= COUNTED_BY_HAND:
                predicted = labels.tolist()
            else:
                counts = np.bincount(labels, minlength=probabilities.shape[1]).tolist()
        now_ms = int(time.time() * 1000)
        with self._lock:
            record = self._record(version)
            record.codes[code] = record.codes.get(code, 0) + 1
            record.last_ms = now_ms
            if code != 200:
                record.streak += 1
                record.longest_streak = max(record.longest_streak, record.streak)
                record.failures += 1
                record.failure_ns += int(seconds * 1e9)
                return
            record.streak = 0
            record.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            record.latency_sum += seconds
            record.success_ns += int(seconds * 1e9)
            if probabilities is None:
                return
            classes = record.classes
            if classes is None:  # sized by the model's output
                classes = record.classes = [0] * probabilities.shape[1]
            if predicted is not None:
                record.images += len(predicted)
                for label in predicted:
                    classes[label] += 1
            elif counts is not None:
                record.images += sum(counts)
                for label, count in enumerate(counts):
                    classes[label] += count

    def refused(self, version: int, code: int) -> None:
        """One request refused ``code`` at the door while ``version`` was served: no model
        judged it, so the version's outcomes, streak and failures are left as they were."""
        with self._lock:
            record = self._record(version)
            record.refused[code] = record.refused.get(code, 0) + 1

    def executed(self, version: int) -> None:
        """One model call of ``version`` (any number of images)."""
        with self._lock:
            self._record(version).executions += 1

    def snapshot(self) -> dict[int, VersionRecord]:
        """A copy of every version's counters, by version."""
        with self._lock:
            return {v: VersionRecord(**{**vars(r), "codes": dict(r.codes),
                                        "refused": dict(r.refused),
                                        "buckets": list(r.buckets),
                                        "classes": None if r.classes is None else list(r.classes)})
                    for v, r in self._records.items()}

    # the Prometheus reading --------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """The five families (prometheus_client calls this at each scrape)."""
        records = sorted(self.snapshot().items())
        requests = CounterMetricFamily("retrain_serving_version_requests",
                                       "Model outcomes (200, or 500 from the model), by version "
                                       "and status code", labels=["version", "code"])
        refused = CounterMetricFamily("retrain_serving_version_refused",
                                      "Requests refused before a model judged them, by the "
                                      "version served then and status code",
                                      labels=["version", "code"])
        latency = HistogramMetricFamily("retrain_serving_version_latency_seconds",
                                        "Latency of successful answers, by version",
                                        labels=["version"])
        classes = CounterMetricFamily("retrain_serving_predicted_class",
                                      "Images answered, by version and predicted class",
                                      labels=["version", "class"])
        streak = GaugeMetricFamily("retrain_serving_version_longest_error_streak",
                                   "Longest run of consecutive model 500s, by version",
                                   labels=["version"])
        for version, record in records:
            name = str(version)
            for code, count in sorted(record.codes.items()):
                requests.add_metric([name, str(code)], count)
            for code, count in sorted(record.refused.items()):
                refused.add_metric([name, str(code)], count)
            cumulative = np.cumsum(record.buckets).tolist()
            latency.add_metric([name], [(floatToGoString(le), c) for le, c in
                                        zip((*LATENCY_BUCKETS, float("inf")), cumulative)],
                               record.latency_sum)
            if record.classes is not None:
                for label, count in enumerate(record.classes):
                    classes.add_metric([name, str(label)], count)
            streak.add_metric([name], record.longest_streak)
        yield from (requests, refused, latency, classes, streak)

    # the statistics extension's reading ---------------------------------------------------
    def model_stats(self, name: str, versions: list[int]) -> list[dict[str, Any]]:
        """Triton's ``$model_stat`` of each of ``versions`` (zeros for one not answered yet)."""
        records = self.snapshot()
        return [_model_stat(name, records.get(v) or VersionRecord(v)) for v in versions]

    def versions(self) -> list[int]:
        """The versions counted so far, ascending."""
        with self._lock:
            return sorted(self._records)


def _duration(count: int = 0, ns: int = 0) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _model_stat(name: str, record: VersionRecord) -> dict[str, Any]:
    """Triton's JSON form of one version's statistics; this server measures each request
    whole, so the queue and compute durations are not reported apart (zeros)."""
    return {
        "name": name, "version": str(record.version), "last_inference": record.last_ms,
        "inference_count": record.images, "execution_count": record.executions,
        "inference_stats": {
            "success": _duration(record.successes, record.success_ns),
            "fail": _duration(record.failures, record.failure_ns),
            **{part: _duration() for part in ("queue", "compute_input", "compute_infer",
                                              "compute_output", "cache_hit", "cache_miss")}},
        "batch_stats": [],
    }
