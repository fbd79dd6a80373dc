"""Waiting between tries: exponential, capped, interruptible, optionally jittered.

Every loop that tries again after a failure (a sink that is away, an outbox whose receiver is
down, a Redis outage, a lease renewal that failed) takes its waits from one ``Backoff``: the
first wait is ``first``, each next one ``factor`` times longer up to ``cap``, and ``reset``
after a success starts again from ``first``. ``wait`` sleeps the next delay on the ``stop``
event when there is one, so a service asked to stop never sits out a long delay; with
``jitter`` (a fraction), each delay is drawn from ``[delay * (1 - jitter), delay]`` so many
clients failing together do not retry together (the undrawn delay still doubles).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class Backoff:
    def __init__(self, first: float, cap: float, *, factor: float = 2.0, jitter: float = 0.0,
                 stop: threading.Event | None = None,
                 sleep: Callable[[float], object] = time.sleep,
                 rng: random.Random | None = None) -> None:
        problems = [what for what, bad in (
            (f"first wait {first} must be above 0", first <= 0),
            (f"cap {cap} must be at least the first wait {first}", cap < first),
            (f"factor {factor} must be at least 1", factor < 1),
            (f"jitter {jitter} must be from 0 to below 1", not 0 <= jitter < 1)) if bad]
        if problems:
            raise ValueError("; ".join(problems))
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self._stop, self._sleep = stop, sleep
        self._rng = rng or random.Random()
        self._next = first
        self.failures = 0  # delays handed out since the last reset

    def next(self) -> float:
        """The wait before the next try; the one after it is ``factor`` times longer (capped)."""
        delay = self._next
        self._next = min(self.cap, delay * self.factor)
        self.failures += 1
        if self.jitter:
            delay *= 1 - self.jitter * self._rng.random()
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first`` again."""
        self._next = self.first
        self.failures = 0

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when ``stop`` is set; True when it was (stop trying)."""
        if self._stop is not None:
            return self._stop.wait(seconds)
        self._sleep(seconds)
        return False

    def wait(self) -> bool:
        """Wait the next delay (``pause(next())``); True when ``stop`` was set meanwhile."""
        return self.pause(self.next())
