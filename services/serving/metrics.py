"""The model server's Prometheus metrics, in a registry of its own (``GET /metrics``).

The request counter (by protocol and status code) and the latency histogram are what the
selector's canary judges a new version by (``services.selector.kserve.ScrapedHealth``); the
per-version statistics (``version_stats``), when kept, are what the live guard judges by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.serving.version_stats import VersionStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """``queued()`` and ``compiled()`` are read at each scrape (images waiting for the model;
    whether the served version runs on LiteRT). With ``per_version``, ``versions`` keeps each
    version's statistics and the registry exports them; without, it is None."""

    def __init__(self, queued: Callable[[], int], compiled: Callable[[], bool],
                 per_version: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.versions = VersionStats() if per_version else None
        if self.versions is not None:
            self.registry.register(self.versions)
        self._batch_sizes = Histogram("retrain_serving_batch_size", "Images per model call",
                                      buckets=BATCH_BUCKETS, registry=self.registry)
        self._requests = Counter("retrain_serving_requests", "Requests", ["protocol", "code"],
                                 registry=self.registry)
        self._latency = Histogram("retrain_serving_latency_seconds", "Latency", ["protocol"],
                                  registry=self.registry)
        # each label set's child, found once (``labels()`` takes a lock and builds a key on
        # every call: on the request path, twice per request)
        self._counted: dict[tuple[str, int], Any] = {}
        self._timers: dict[str, Any] = {}
        self._version = Gauge("retrain_serving_model_version", "Version being served",
                              registry=self.registry)
        Gauge("retrain_serving_queued_images", "Images accepted and not yet answered",
              registry=self.registry).set_function(queued)
        Gauge("retrain_serving_model_compiled", "1 when the served version runs on LiteRT",
              registry=self.registry).set_function(lambda: int(compiled()))

    def count(self, protocol: str, code: int) -> None:
        """One request answered: ``protocol`` is v1, v2 or grpc."""
        child = self._counted.get((protocol, code))
        if child is None:
            child = self._counted[protocol, code] = self._requests.labels(protocol, str(code))
        child.inc()

    def timed(self, protocol: str, seconds: float) -> None:
        timer = self._timers.get(protocol)
        if timer is None:
            timer = self._timers[protocol] = self._latency.labels(protocol)
        timer.observe(seconds)

    def batch(self, images: int) -> None:
        """One model call of ``images`` images."""
        self._batch_sizes.observe(images)

    def serving(self, version: int | None) -> None:
        self._version.set(version or 0)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
