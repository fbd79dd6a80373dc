"""Consuming a Redis stream of CloudEvents (what ``RedisStreamSink`` writes) with a consumer
group: each entry is handled by one consumer of the group and acknowledged only after it was
handled, so a consumer that dies mid-way leaves the entry pending, and another consumer of
the group claims it once it has been idle for ``claim_after`` seconds. At-least-once, like
every delivery here; receivers drop duplicates by (source, id).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from core.supervise import Outage
from events.codec import decode
from events.dead_letters import dead_stream
from events.envelope import Event
from events.errors import EventError
from events.sinks import DEAD_MAX_LENGTH

log = logging.getLogger(__name__)


class StreamConsumer:
    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str,
                 handle: Callable[[Event], None], *, claim_after: float = 30.0,
                 block_ms: int = 1000, max_deliveries: int = 5) -> None:
        self._r = client
        self.stream = stream
        self.dead = dead_stream(stream)
        self._max_deliveries = max_deliveries
        self.group = group
        self.consumer = consumer
        self._handle = handle
        self._claim_after_ms = int(claim_after * 1000)
        self._block_ms = block_ms
        self.handled = 0
        try:  # from the start of the stream the first time the group exists
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self) -> int:
        """Handle what is waiting (entries idle in a dead consumer first); returns how many."""
        done = 0
        _next, claimed, *_ = self._r.xautoclaim(self.stream, self.group, self.consumer,
                                                 min_idle_time=self._claim_after_ms, start_id="0-0",
                                                 count=100)
        for entry_id, fields in claimed:
            if not fields:  # None for entries deleted meanwhile
                continue
            if self._deliveries(entry_id) > self._max_deliveries:
                self._bury(entry_id, fields, f"handling failed {self._max_deliveries} times")
                continue
            done += self._one(entry_id, fields)
        reply = self._r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=100,
                                   block=self._block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                done += self._one(entry_id, fields)
        return done

    def _deliveries(self, entry_id: bytes) -> int:
        info = self._r.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(info[0]["times_delivered"]) if info else 0

    def _bury(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """A poison entry: moved to the dead-letter stream with the reason, so it stops
        being retried and blocking nothing else; ``retrain events dead-letters`` shows it."""
        log.error("stream %s entry %s moved to %s: %s", self.stream, entry_id, self.dead, reason)
        with self._r.pipeline() as pipe:
            pipe.xadd(self.dead, {**fields, b"reason": reason.encode()}, maxlen=DEAD_MAX_LENGTH,
                      approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            pipe.execute()

    def _one(self, entry_id: bytes, fields: dict[bytes, bytes]) -> int:
        try:
            [event] = decode({"content-type": "application/cloudevents+json"}, fields[b"event"])
        except (EventError, KeyError, ValueError) as exc:
            log.error("stream %s entry %s is not a CloudEvent, skipped: %s", self.stream, entry_id, exc)
            self._r.xack(self.stream, self.group, entry_id)
            return 0
        self._handle(event)  # raising leaves the entry pending: retried by a later claim
        self._r.xack(self.stream, self.group, entry_id)
        self.handled += 1
        return 1

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop``; a Redis outage is logged once when it starts and once when it
        ends, and waited out with backoff (up to 5 s between attempts)."""
        outage = Outage(f"Redis (stream {self.stream})")
        while not stop.is_set():
            try:
                self.poll()
                outage.ok()
            except (redis.RedisError, OSError) as exc:
                stop.wait(outage.failed(exc))
            except Exception:
                log.exception("stream %s: handling failed; the entry stays pending", self.stream)
                stop.wait(1.0)
