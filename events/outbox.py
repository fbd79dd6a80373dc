"""A durable outbox: at-least-once delivery of events to a sink that may be down.

``put`` returns once Redis holds the event (a stream entry), so a caller can acknowledge its
own upstream (a webhook sender, the watcher's state) right after. A sender thread delivers
the entries in order and deletes each only after the sink acknowledged it; while the sink is
down it retries the oldest entry with exponential backoff, so an outage of minutes loses
nothing and a restarted process delivers what its predecessor left. An event the sink refuses
outright (a 4xx) is moved to a dead-letter stream with the reason instead of blocking the rest,
and so is one the sink fails on ``max_attempts`` times (a 500 each time: the receiver is up
and chokes on that event); an unreachable sink or a 503 is an outage, waited out however
long it lasts. ``retrain events dead-letters ls|replay`` shows and re-sends dead letters.
Receivers drop the duplicates at-least-once can produce by (source, id).
"""

from __future__ import annotations

import contextlib
import logging
import threading

import redis

from core.backoff import Backoff
from core.supervise import Outage
from events.codec import decode, encode
from events.dead_letters import dead_stream
from events.envelope import Event
from events.errors import EventError, SinkFailedError, SinkRejectedError
from events.sinks import DEAD_MAX_LENGTH, Sink

log = logging.getLogger(__name__)

# Append the event only the first time KEYS[1] (a delivery id) is seen: one round trip.
_PUT_ONCE = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[2]) then return false end
return redis.call('XADD', KEYS[2], '*', 'event', ARGV[1])
"""


PREFIX = "retrain:outbox:"  # + the outbox's name: its stream (and :dead, :attempts beside it)
REGISTRY = "retrain:outboxes"  # every outbox stream that was started here


class Outbox:
    def __init__(self, client: redis.Redis, sink: Sink, name: str, *,
                 first_backoff: float = 0.2, max_backoff: float = 30.0,
                 max_attempts: int = 10) -> None:
        self._r = client
        self._sink = sink
        self.stream = PREFIX + name
        self.dead = dead_stream(self.stream)
        self._attempts = f"{self.stream}:attempts"  # entry id -> failed deliveries
        self._max_attempts = max_attempts
        self._wake = threading.Event()
        self._stop = threading.Event()
        # the sender's waits while the sink is down (a bad pair is refused here, not in it)
        self._backoff = Backoff(first_backoff, max_backoff, stop=self._stop)
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failures = 0
        self._put_once = client.register_script(_PUT_ONCE)

    # the producer side: what Sink.send means for whoever holds an outbox
    def send(self, event: Event) -> None:
        self.put(event)

    def put(self, event: Event) -> str:
        _headers, body = encode(event, "structured")
        entry = self._r.xadd(self.stream, {"event": body})
        self._wake.set()
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def put_once(self, event: Event, seen_key: str, ttl_seconds: int) -> bool:
        """``put`` unless ``seen_key`` was set within ``ttl_seconds`` (a replayed delivery);
        the check and the append are one atomic step. True if the event was appended."""
        _headers, body = encode(event, "structured")
        appended = self._put_once(keys=[seen_key, self.stream], args=[body, ttl_seconds])
        if appended:
            self._wake.set()
        return bool(appended)

    def pending(self) -> int:
        return int(self._r.xlen(self.stream))

    def dead_letters(self) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in fields.items()}
                for _id, fields in self._r.xrange(self.dead)]

    # the sender side
    def start(self) -> Outbox:
        with contextlib.suppress(redis.RedisError):  # listed for dashboards; sending goes on
            self._r.sadd(REGISTRY, self.stream)
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.stream}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def deliver_once(self, batch: int = 1) -> bool:
        """Try the oldest entries (up to ``batch``) in order: True if any left the outbox
        (delivered or dead-lettered), False if it is empty or the sink is unavailable.
        Delivered entries are deleted together, after the sink acknowledged each."""
        entries = self._r.xrange(self.stream, count=batch)
        done: list[bytes] = []
        try:
            for entry_id, fields in entries:
                body = fields[b"event"]
                try:
                    [event] = decode({"content-type": "application/cloudevents+json"}, body)
                except EventError as exc:  # cannot happen for what put() wrote; never block
                    self._bury(entry_id, body, f"undecodable: {exc}")
                    continue
                try:
                    self._sink.send(event)
                except SinkRejectedError as exc:
                    self._bury(entry_id, body, str(exc))
                    continue
                except SinkFailedError as exc:
                    self.failures += 1
                    attempts = int(self._r.hincrby(self._attempts, entry_id, 1))
                    if attempts >= self._max_attempts:
                        self._bury(entry_id, body, f"failed {attempts} times, last: {exc}")
                        continue
                    log.warning("outbox %s: %s failed at the sink (attempt %d of %d): %s",
                                self.stream, event.id, attempts, self._max_attempts, exc)
                    return bool(done)
                except Exception as exc:
                    self.failures += 1
                    log.warning("outbox %s: %s not delivered yet (%d waiting): %s", self.stream,
                                event.id, self.pending(), exc)
                    return bool(done)
                done.append(entry_id)
                self.delivered += 1
            return bool(entries)
        finally:
            if done:
                with self._r.pipeline(transaction=True) as pipe:
                    pipe.xdel(self.stream, *done)
                    pipe.hdel(self._attempts, *done)
                    pipe.execute()

    def _bury(self, entry_id: bytes, body: bytes, reason: str) -> None:
        log.error("outbox %s: event refused, moved to %s: %s", self.stream, self.dead, reason)
        with self._r.pipeline() as pipe:  # one transaction: never both, never neither
            pipe.xadd(self.dead, {"event": body, "reason": reason}, maxlen=DEAD_MAX_LENGTH,
                      approximate=True)
            pipe.xdel(self.stream, entry_id)
            pipe.hdel(self._attempts, entry_id)
            pipe.execute()

    def _run(self) -> None:
        backoff = self._backoff
        outage = Outage(f"Redis (outbox {self.stream})")
        while not self._stop.is_set():
            failures = self.failures
            try:
                moved = self.deliver_once(batch=100)
                outage.ok()
            except redis.RedisError as exc:
                outage.failed(exc)
            else:
                if moved:
                    backoff.reset()
                    continue
                if self.failures == failures:  # it was empty: new entries wake us at once
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
            if backoff.wait():  # the sink or Redis is away: try again later
                return

def outbox_depths(client: redis.Redis) -> dict[str, int]:
    """Each outbox started here, by name, with the events it holds not yet delivered (for
    dashboards): two round trips however many outboxes there are."""
    streams = sorted(k.decode() for k in client.smembers(REGISTRY))
    with client.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
        depths = pipe.execute()
    return {stream.removeprefix(PREFIX): int(depth)
            for stream, depth in zip(streams, depths, strict=True)}
