"""Limits against overload: a token bucket per client, pure and clock-driven, and a bound on
the images waiting for the model.

Anonymous clients are told apart by address and get ``anon_rate`` requests per second;
clients presenting a known API key (``Authorization: Bearer KEY``, identified by the service's
``core.auth.ApiKeys``) are told apart by key and get ``keyed_rate``. A key is never needed,
but one presented must be ours: anything else in ``Authorization`` is refused 401
(``KeyRefusedError``), keys configured or not. A rate of 0 means no limit. Each bucket holds
one second's worth of requests (at least one), so short bursts pass and sustained excess is
refused.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core.auth import ApiKeys
from services.serving.errors import OverloadedError

IDLE_SECONDS = 60.0  # buckets untouched this long are forgotten
MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    client: str  # "anon:<address>" or "key:<fingerprint>"
    rate: float
    retry_after: float = 0.0


class RateLimiter:
    def __init__(self, anon_rate: float, keyed_rate: float,
                 api_keys: ApiKeys | Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._anon, self._keyed = anon_rate, keyed_rate
        self.keys = ApiKeys.of(api_keys)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, updated)
        self._lock = threading.Lock()

    def _client(self, address: str, authorization: str | None) -> tuple[str, float]:
        key = self.keys.optional(authorization)  # a key that is not ours: refused (401)
        if key is None:
            return f"anon:{address}", self._anon
        return f"key:{hashlib.sha256(key.encode()).hexdigest()[:12]}", self._keyed

    def check(self, address: str, authorization: str | None) -> Verdict:
        """Take one token for this client, or say how long until one is there. An
        ``Authorization`` header that presents no key of ours raises ``KeyRefusedError``."""
        client, rate = self._client(address, authorization)
        if rate <= 0:
            return Verdict(True, client, rate)
        burst = max(1.0, rate)
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(client, (burst, now))
            tokens = min(burst, tokens + (now - updated) * rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                verdict = Verdict(True, client, rate)
            else:
                self._buckets[client] = (tokens, now)
                verdict = Verdict(False, client, rate, (1.0 - tokens) / rate)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_idle(now)
        return verdict

    def _forget_idle(self, now: float) -> None:
        self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < IDLE_SECONDS}


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class Backlog:
    """Images accepted and not yet answered. A request that would take them past ``limit`` is
    turned away (503 + Retry-After) instead of queued, so memory stays bounded whatever the
    clients send; a request arriving when nothing waits is always taken, however big."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.images = 0
        self._lock = threading.Lock()

    def admitted(self, images: int) -> _Share:
        """``with backlog.admitted(n):`` holds ``n`` images' share while the block runs
        (``OverloadedError`` when the backlog is full); a class, not a generator: every
        inference request enters it."""
        return _Share(self, images)

    def _take(self, images: int) -> None:
        with self._lock:
            if self.images and self.images + images > self.limit:
                raise OverloadedError(f"{self.images} images already wait for the model (the "
                                      f"limit is {self.limit}); retry shortly")
            self.images += images

    def _give_back(self, images: int) -> None:
        with self._lock:
            self.images -= images


class _Share:
    __slots__ = ("_backlog", "_images")

    def __init__(self, backlog: Backlog, images: int) -> None:
        self._backlog, self._images = backlog, images

    def __enter__(self) -> None:
        self._backlog._take(self._images)

    def __exit__(self, *_: object) -> None:
        self._backlog._give_back(self._images)
