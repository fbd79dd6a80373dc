"""Worker threads that never die silently, and the health a service reports.

A long-lived service (``retrain up``, ``retrain select serve``) does its work in threads.
``Supervisor.spawn`` runs each one; if one raises, the failure is logged with its traceback
and ``on_failure`` is called (the service stops and exits non-zero, so its supervisor —
systemd, Kubernetes — restarts it) instead of the thread ending while ``/healthz`` stays 200.
``problem()`` is what ``/healthz`` reports: a dead thread, or Redis out of reach.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from core.backoff import Backoff
from core.redact import redact

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, client: redis.Redis | None, on_failure: Callable[[str], None]) -> None:
        self._r = client
        self._on_failure = on_failure
        self._threads: list[threading.Thread] = []
        self.failure: str | None = None

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def supervised() -> None:
            try:
                target()
            except BaseException as exc:
                self.failure = f"the {name} thread died: {redact(str(exc)) or type(exc).__name__}"
                log.critical("%s; stopping so that a supervisor restarts the service",
                             self.failure, exc_info=True)
                self._on_failure(self.failure)

        thread = threading.Thread(target=supervised, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout)

    def problem(self) -> str | None:
        """Why the service cannot work now, or None."""
        if self.failure is not None:
            return self.failure
        if self._r is not None:
            try:
                self._r.ping()
            except (redis.RedisError, OSError) as exc:
                return f"Redis is out of reach: {redact(str(exc)) or type(exc).__name__}"
        return None


class Outage:
    """Logs one line when a dependency goes away and one when it is back (not one per try),
    and says how long to wait before the next try (``Backoff``: 0.1 s, doubling up to
    ``max_wait``)."""

    def __init__(self, what: str, max_wait: float = 5.0) -> None:
        self._what = what
        self._backoff = Backoff(min(0.1, max_wait), max_wait)

    @property
    def ongoing(self) -> bool:
        return self._backoff.failures > 0

    def failed(self, exc: BaseException) -> float:
        if not self.ongoing:
            log.warning("%s is unavailable (%s); retrying with backoff", self._what,
                        redact(str(exc)) or type(exc).__name__)
        return self._backoff.next()

    def ok(self) -> None:
        if self.ongoing:
            log.warning("%s is back", self._what)
            self._backoff.reset()
