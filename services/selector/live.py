"""The guard's reading of the model server's per-version statistics (``GET /metrics``).

The server counts, per served version, every model outcome by status code (200, or a 500 the
model is to blame for), a latency histogram, the answers predicting each class and the longest
run of model 500s in a row; requests refused at the door (bad input, keys, rates, a full
backlog) are counted apart, under the version served then, and are no version's errors.
``VersionStats`` holds one version's counters, cumulative or a window's difference;
``parse_metrics`` reads them from Prometheus text (``read_metrics`` from a URL); a
``MetricsSource`` yields ``Snapshot``\\ s of every version at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import httpx

from services.selector.errors import LiveMetricsError

REQUESTS = "retrain_serving_version_requests_total"
REFUSED = "retrain_serving_version_refused_total"
LATENCY_BUCKET = "retrain_serving_version_latency_seconds_bucket"
CLASSES = "retrain_serving_predicted_class_total"
STREAK = "retrain_serving_version_longest_error_streak"

K = TypeVar("K")


@dataclass(frozen=True)
class VersionStats:
    """One version's counters: cumulative since the server started, or a window's delta."""

    requests: float = 0.0  # every model outcome (answers)
    errors: float = 0.0  # model outcomes with a 5xx status
    latency: Mapping[float, float] = field(default_factory=dict)  # cumulative buckets: le -> count
    classes: Mapping[int, float] = field(default_factory=dict)  # predicted class -> answers
    longest_error_streak: float = 0.0
    refused: float = 0.0  # requests refused at the door while it served (shown, never judged)

    def minus(self, earlier: VersionStats) -> VersionStats:
        """What happened since ``earlier``: counters subtracted, the streak kept. Counters
        lower than ``earlier``'s mean the server restarted: then everything counted is new."""
        if self.requests < earlier.requests:
            return self
        return VersionStats(
            requests=self.requests - earlier.requests,
            errors=max(0.0, self.errors - earlier.errors),
            latency=_subtract(self.latency, earlier.latency),
            classes=_subtract(self.classes, earlier.classes),
            longest_error_streak=self.longest_error_streak,
            refused=max(0.0, self.refused - earlier.refused),
        )

    def plus(self, other: VersionStats) -> VersionStats:
        """Two servers' counters summed (pods of one revision): the streak is the longer."""
        return VersionStats(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency=_add(self.latency, other.latency),
            classes=_add(self.classes, other.classes),
            longest_error_streak=max(self.longest_error_streak, other.longest_error_streak),
            refused=self.refused + other.refused,
        )

    @property
    def error_rate(self) -> float:
        """The share of model outcomes that were errors (refusals are not in it)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_seconds(self) -> float | None:
        """The 99th percentile as Prometheus's ``histogram_quantile`` reads it: linear within
        the bucket holding the 99th percentile answer (the first bucket starting at zero); one
        past the last finite bucket reads as that bucket's bound. None: no answers."""
        total = self.latency.get(math.inf, 0.0)
        if total <= 0:
            return None
        rank = 0.99 * total
        lower, below = 0.0, 0.0
        for bound in sorted(self.latency):
            count = self.latency[bound]
            if count >= rank:
                if bound == math.inf:
                    return lower if len(self.latency) > 1 else None
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return None

    @property
    def answers(self) -> float:
        """Answers whose predicted class was counted (successful images)."""
        return sum(self.classes.values())


def _subtract(a: Mapping[K, float], b: Mapping[K, float]) -> dict[K, float]:
    return {k: max(0.0, v - b.get(k, 0.0)) for k, v in a.items()}


def _add(a: Mapping[K, float], b: Mapping[K, float]) -> dict[K, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}


@dataclass
class _Counts:
    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    classes: dict[int, float] = field(default_factory=dict)
    streak: float = 0.0
    refused: float = 0.0

    def frozen(self) -> VersionStats:
        return VersionStats(self.requests, self.errors, dict(self.latency), dict(self.classes),
                            self.streak, self.refused)


def parse_metrics(text: str) -> dict[int, VersionStats]:
    """Every version's counters in a Prometheus text exposition; other metrics are ignored.
    Raises ``LiveMetricsError`` on text that is not Prometheus."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[int, _Counts] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (REQUESTS, REFUSED, LATENCY_BUCKET, CLASSES, STREAK):
                    version = int(sample.labels["version"])
                    _count(counts.setdefault(version, _Counts()), sample.name, sample.labels,
                           sample.value)
    except (ValueError, KeyError) as exc:
        raise LiveMetricsError(f"not the model server's Prometheus metrics: {exc}") from None
    return {version: c.frozen() for version, c in sorted(counts.items())}


def _count(c: _Counts, name: str, labels: Mapping[str, str], value: float) -> None:
    if name == REQUESTS:
        c.requests += value
        if labels["code"].startswith("5"):
            c.errors += value
    elif name == REFUSED:
        c.refused += value
    elif name == LATENCY_BUCKET:
        bound = float(labels["le"])  # "+Inf" parses to infinity
        c.latency[bound] = c.latency.get(bound, 0.0) + value
    elif name == CLASSES:
        label = int(labels["class"])
        c.classes[label] = c.classes.get(label, 0.0) + value
    else:
        c.streak = max(c.streak, value)


@dataclass(frozen=True)
class Snapshot:
    """Every version's counters as read at ``at`` (the source's clock, seconds)."""

    at: float
    versions: Mapping[int, VersionStats]

    def of(self, version: int) -> VersionStats:
        return self.versions.get(version, VersionStats())


def read_metrics(url: str, timeout: float) -> dict[int, VersionStats]:
    """Every version's counters read from one server's metrics at ``url``; a
    ``LiveMetricsError`` naming the URL when it cannot be reached, answers other than 200, or
    answers something that is not the model server's metrics."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise LiveMetricsError(f"cannot read {url}: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise LiveMetricsError(f"{url} answered {response.status_code}")
    try:
        return parse_metrics(response.text)
    except LiveMetricsError as exc:
        raise LiveMetricsError(f"{url}: {exc}") from None


class MetricsSource(Protocol):
    def scrape(self) -> Snapshot:
        """Every version's counters now; raises ``LiveMetricsError`` when they cannot be read."""
        ...


class UrlSource:
    """One model server's ``/metrics``."""

    def __init__(self, url: str, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._timeout = timeout
        self._clock = clock

    def scrape(self) -> Snapshot:
        versions = read_metrics(self.url, self._timeout)
        return Snapshot(self._clock(), versions)

    def __repr__(self) -> str:
        return f"UrlSource({self.url!r})"


def to_json(stats: VersionStats) -> dict[str, object]:
    """``stats`` as JSON can hold it (a watch kept in Redis): bucket bounds as strings."""
    return {"requests": stats.requests, "errors": stats.errors,
            "latency": {("+Inf" if b == math.inf else repr(b)): c for b, c in stats.latency.items()},
            "classes": {str(k): v for k, v in stats.classes.items()},
            "longest_error_streak": stats.longest_error_streak, "refused": stats.refused}


def from_json(raw: Mapping[str, object]) -> VersionStats:
    latency = raw.get("latency", {})
    classes = raw.get("classes", {})
    assert isinstance(latency, dict) and isinstance(classes, dict)
    return VersionStats(float(raw["requests"]), float(raw["errors"]),  # type: ignore[arg-type]
                        {float(b): float(c) for b, c in latency.items()},
                        {int(k): float(v) for k, v in classes.items()},
                        float(raw.get("longest_error_streak", 0.0)),  # type: ignore[arg-type]
                        float(raw.get("refused", 0.0)))  # type: ignore[arg-type]
