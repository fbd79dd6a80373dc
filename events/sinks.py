"""Where events go: an HTTP endpoint (Argo Events webhook, the local stack) or a Redis stream."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import redis

from core.backoff import Backoff
from events.codec import Mode, encode
from events.envelope import Event
from events.errors import SinkFailedError, SinkRejectedError, SinkUnavailableError

log = logging.getLogger(__name__)


class Sink(Protocol):
    def send(self, event: Event) -> None: ...


class HttpSink:
    """POSTs each event; retries transient failures with exponential backoff."""

    def __init__(
        self,
        url: str,
        *,
        mode: Mode = "binary",
        api_key: str | None = None,
        attempts: int = 5,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._mode = mode
        self._attempts = attempts
        self._timeout = timeout
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def send(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> list[str]:
        """``send``, returning the ids the receiver said it already had (a retrain receiver
        answers ``{"duplicates": [...]}``; others say nothing of the kind)."""
        headers, body = encode(event, self._mode)
        headers.update(self._auth)
        backoff = Backoff(0.2, 5.0)
        last = ""
        answered = False  # the last failure was the receiver's own answer, not an outage
        for attempt in range(self._attempts):
            try:
                response = httpx.post(self.url, content=body, headers=headers, timeout=self._timeout)
            except httpx.HTTPError as exc:
                last, answered = f"{type(exc).__name__}: {exc}", False
            else:
                if response.status_code < 300:
                    return _duplicates(response)
                if response.status_code < 500 and response.status_code != 429:
                    raise SinkRejectedError(
                        self.url, f"rejected with {response.status_code}: {response.text[:300]}"
                    )
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                # a gateway's 502/504 (the service behind it is down), 503 and 429 are outages
                answered = response.status_code not in (429, 502, 503, 504)
            if attempt + 1 < self._attempts:
                backoff.wait()
        raise (SinkFailedError if answered else SinkUnavailableError)(self.url, last)


STREAM = "retrain:events"  # the events' stream in Redis (the selector reads it)
STREAM_MAX_LENGTH = 100_000  # RETRAIN_STREAM_MAX_LENGTH: Redis memory stays bounded
DEAD_MAX_LENGTH = 10_000  # dead letters kept for inspection and replay


def _duplicates(response: httpx.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return []
    found = body.get("duplicates") if isinstance(body, dict) else None
    return [str(d) for d in found] if isinstance(found, list) else []


class RedisStreamSink:
    """Appends each event, structured-mode JSON, to a Redis stream capped at about
    ``max_length`` entries (``MAXLEN ~``: the oldest go first, cheaply)."""

    def __init__(self, client: redis.Redis, stream: str = STREAM,
                 max_length: int = STREAM_MAX_LENGTH) -> None:
        self._client = client
        self.stream = stream
        self._max_length = max_length

    def send(self, event: Event) -> None:
        headers, body = encode(event, "structured")
        self._client.xadd(self.stream, {"event": body, "type": event.type.value},
                          maxlen=self._max_length, approximate=True)


class PatientSink:
    """Sends through ``sink``, waiting out an outage of up to ``give_up_after`` seconds (Redis
    restarting, a selector rolling out) instead of failing the sender: for a trainer whose
    model is done and must not be trained again because the hand-off was briefly away."""

    def __init__(self, sink: Sink, give_up_after: float = 900.0, *, first_wait: float = 0.5,
                 max_wait: float = 15.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._give_up_after = give_up_after
        self._first_wait, self._max_wait = first_wait, max_wait
        self._sleep, self._clock = sleep, clock
        Backoff(first_wait, max_wait)  # a bad pair is refused now, not at the first outage

    def send(self, event: Event) -> None:
        deadline = self._clock() + self._give_up_after
        backoff = Backoff(self._first_wait, self._max_wait, sleep=self._sleep)
        while True:
            try:
                self._sink.send(event)
                return
            except SinkRejectedError:
                raise  # refused, not away: waiting will not change the answer
            except (redis.RedisError, SinkUnavailableError, OSError) as exc:
                wait = backoff.next()
                if self._clock() + wait > deadline:
                    raise SinkUnavailableError(getattr(self._sink, "url", "stream"),
                                               f"gave up after {self._give_up_after:.0f}s: {exc}") from exc
                log.warning("cannot send %s yet (%s); retrying in %.1fs", event.id, exc, wait)
                backoff.pause(wait)


def read_stream(client: redis.Redis, stream: str = STREAM) -> list[dict[str, object]]:
    return [json.loads(fields[b"event"]) for _id, fields in client.xrange(stream)]
