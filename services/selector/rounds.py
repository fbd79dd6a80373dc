"""Rounds kept in Redis, so they outlive the selector that opened them.

A round (``retrain:round:<scope>:<run_id>``, a hash) holds the scored candidates of one run
and every training of the run that has ended (trained, failed, unscorable; a refused stranger
is not one of the run's trainings). It closes at its
quorum, at its deadline, or once as many trainings have ended as the run started
(``round_size``, which the run's events carry) — whichever comes first — and exactly once:
closing claims the run in ``retrain:rounds:<scope>:closed`` and takes the round in the same
script, so a candidate either joined before the close or is told it is late.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from events.payloads import ModelTrained
from services.selector.policy import Entry

CLOSED_KEPT = 10_000  # closed runs remembered (a later model of theirs is judged alone)
ROUND_TTL = 7 * 86400  # a round nothing ever closes (no deadline, size unknown) is forgotten

# KEYS: round, closed set. ARGV: field, value, size (0: unknown), now, run id, ttl.
# Returns -1 if the round is closed, else {entries, ended, size}.
_JOIN = """
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then return -1 end
redis.call('HSETNX', KEYS[1], 'opened_at', ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[1], 'size', ARGV[3]) end
local entries, ended, models = 0, 0, {}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local kind, model = string.sub(name, 1, 6), string.sub(name, 7)
  if kind == 'entry:' then entries = entries + 1 end
  if (kind == 'entry:' or kind == 'ended:') and not models[model] then
    models[model] = true
    ended = ended + 1
  end
end
return {entries, ended, tonumber(redis.call('HGET', KEYS[1], 'size') or '0')}
"""

# KEYS: round, closed set. ARGV: run id, now, kept. Returns the round's fields, or nil.
_CLOSE = """
if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1]) == 0 then return false end
local n = redis.call('ZCARD', KEYS[2])
if n > tonumber(ARGV[3]) then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - tonumber(ARGV[3]) - 1) end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
"""


@dataclass(frozen=True)
class Joined:
    late: bool  # the round had closed: judge the candidate alone
    entries: int = 0  # scored candidates in the round
    ended: int = 0  # trainings of the run that have ended
    size: int = 0  # trainings the run started (0: unknown)

    def complete(self) -> bool:
        return self.size > 0 and self.ended >= self.size


@dataclass(frozen=True)
class Member:
    entry: Entry
    trained: ModelTrained


class RoundStore:
    def __init__(self, client: redis.Redis, scope: str = "default") -> None:
        self._r = client
        tag = hashlib.sha256(scope.encode()).hexdigest()[:12]
        self._prefix = f"retrain:round:{tag}:"
        self._closed = f"retrain:rounds:{tag}:closed"
        self._join = client.register_script(_JOIN)
        self._close = client.register_script(_CLOSE)

    def join(self, trained: ModelTrained, accuracy: float, size: int | None) -> Joined:
        """Add a scored candidate; arrival order is kept by the time it joined."""
        value = json.dumps({"accuracy": accuracy, "val_loss": trained.val_loss,
                            "arrival": time.time(), "trained": trained.model_dump(mode="json")})
        return self._joined(trained.run_id, f"entry:{trained.model_type}", value, size)

    def ended(self, run_id: str, model_type: str, why: str, size: int | None) -> Joined:
        """A training of the run ended without a candidate for the round (failed, or its
        model could not be scored): it counts towards the run's trainings all having ended."""
        return self._joined(run_id, f"ended:{model_type}", why, size)

    def _joined(self, run_id: str, field: str, value: str, size: int | None) -> Joined:
        reply: Any = self._join(keys=[self._prefix + run_id, self._closed],
                                args=[field, value, size or 0, time.time(), run_id, ROUND_TTL])
        if reply == -1:
            return Joined(late=True)
        entries, ended, total = (int(x) for x in reply)
        return Joined(False, entries, ended, total)

    def close(self, run_id: str) -> list[Member] | None:
        """Take the round's candidates, best-first order left to the caller; None if the
        round was closed already (by another selector, or a deadline)."""
        reply = self._close(keys=[self._prefix + run_id, self._closed],
                            args=[run_id, time.time(), CLOSED_KEPT])
        if not reply:
            return None
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        members = []
        for name, raw in fields.items():
            if not name.startswith(b"entry:"):
                continue
            item = json.loads(raw)
            members.append(Member(Entry(item["accuracy"], item["val_loss"], item["arrival"]),
                                  ModelTrained(**item["trained"])))
        return members

    def open_rounds(self) -> dict[str, float]:
        """Every open round's run id and when it opened (to re-arm deadlines after a restart)."""
        out = {}
        for key in self._r.scan_iter(match=self._prefix + "*"):
            opened = self._r.hget(key, "opened_at")
            if opened is not None:
                out[key.decode().removeprefix(self._prefix)] = float(opened)
        return out
