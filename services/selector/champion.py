"""The champion record in Redis, replaced only by compare-and-set (atomic, monotonic)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import redis

PREFIX = "retrain:champion:"


def scoped_key(scope: str, record: str = "") -> str:
    """The key of one of the selector's records for the model repository ``scope`` (the
    champion itself when ``record`` is empty; its history, audit, scores, judgements...)."""
    tag = hashlib.sha256(scope.encode()).hexdigest()[:12]
    return f"{PREFIX}{tag}:{record}" if record else f"{PREFIX}{tag}"
RUN_DECISIONS_TTL = 30 * 86400  # as long as a run's own record
SERVING = ("model.promoted", "rollback")  # decisions that make a run's model a version

# Append a decision to its run's own list: a list already kept for good (its run's model is a
# version: no expiry) stays so; a decision that serves a version keeps it for good; any other
# (re)starts its expiry.
_RUN_DECISION = """
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('PERSIST', KEYS[1])
elseif length == 1 or redis.call('TTL', KEYS[1]) >= 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return length
"""

# Replace the champion only if its generation is still the one the caller read.
_CAS = """
local current = redis.call('GET', KEYS[1])
local generation = 0
if current then generation = cjson.decode(current)['generation'] end
if generation ~= tonumber(ARGV[1]) then return 0 end
if current then redis.call('RPUSH', KEYS[2], current) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], tostring(cjson.decode(ARGV[2])['version']), ARGV[2])
return 1
"""

# Replace the record only if it is still the one the caller read. (The score is written into
# the JSON by the caller: Redis's cjson would round it to 14 digits, and a champion scored
# 0.42333333333333 would then lose to its own model's 0.42333333333333334.)
_SCORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], tostring(cjson.decode(ARGV[2])['version']), ARGV[2])
return 1
"""

# Put the previous champion back (the caller has staged its model as a new version).
_ROLLBACK = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if cjson.decode(current)['generation'] ~= tonumber(ARGV[1]) then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('RPOP', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], tostring(cjson.decode(ARGV[2])['version']), ARGV[2])
return 1
"""


# Undo a rollback cut short before its model was published: ``back`` (the champion it rolled
# back from) serves again, ``previous`` returns to the history, the never-served version goes.
_UNDO_ROLLBACK = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local decoded = cjson.decode(current)
if decoded['generation'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[3], tostring(decoded['version']))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Champion:
    version: int
    model_uri: str
    model_type: str
    accuracy: float | None  # None: served before its score was known (the first model)
    dataset_digest: str
    dataset_uri: str
    run_id: str
    generation: int


class ChampionStore:
    """One champion per model repository (``scope``), so several stacks can share a Redis."""

    def __init__(self, client: redis.Redis, scope: str = "default") -> None:
        self._r = client
        self.client, self.scope = client, scope
        self._cas = client.register_script(_CAS)
        self._rollback = client.register_script(_ROLLBACK)
        self._score = client.register_script(_SCORE)
        self._undo_rollback = client.register_script(_UNDO_ROLLBACK)
        self._key = scoped_key(scope)
        self._history = scoped_key(scope, "history")
        self._audit = scoped_key(scope, "audit")
        self._decided = scoped_key(scope, "decided")
        self._promotion = scoped_key(scope, "promotion")
        self._versions = scoped_key(scope, "versions")  # every version ever served, by number

    def get(self) -> Champion | None:
        raw = self._r.get(self._key)
        return Champion(**json.loads(raw)) if raw else None

    def replace(self, expected_generation: int, new: Champion) -> bool:
        """Atomically install ``new`` if the champion is still at ``expected_generation``."""
        return bool(self._cas(keys=[self._key, self._history, self._versions],
                              args=[expected_generation, json.dumps(asdict(new))]))

    def set_accuracy(self, generation: int, accuracy: float) -> bool:
        """Record the score of the champion at ``generation`` (the first model is served
        before it is scored); False if the champion changed meanwhile."""
        raw = self._r.get(self._key)
        if raw is None or json.loads(raw)["generation"] != generation:
            return False
        scored = json.dumps({**json.loads(raw), "accuracy": accuracy})
        return bool(self._score(keys=[self._key, self._versions], args=[raw, scored]))

    def previous(self) -> tuple[Champion | None, int]:
        """The champion before the current one, and the history's length (for ``restore``)."""
        length = int(self._r.llen(self._history))
        raw = self._r.lindex(self._history, -1) if length else None
        return (Champion(**json.loads(raw)) if raw else None), length

    def champion(self, version: int) -> Champion | None:
        """The champion that served as ``version`` (current, replaced or rolled back), in one
        read: a record kept for every version the selector made champion."""
        raw = self._r.hget(self._versions, str(version))
        return Champion(**json.loads(raw)) if raw else None

    def history(self) -> list[Champion]:
        """Every champion before the current one, oldest first (what rollbacks go back to)."""
        return [Champion(**json.loads(raw)) for raw in self._r.lrange(self._history, 0, -1)]

    def restore(self, expected_generation: int, history_length: int, restored: Champion) -> bool:
        """Atomically make ``restored`` (the previous champion, as newly staged) the champion and
        drop it from the history, if nothing changed since ``previous()`` was read."""
        return bool(self._rollback(keys=[self._key, self._history, self._versions],
                                   args=[expected_generation, json.dumps(asdict(restored)),
                                         history_length]))

    def undo_restore(self, expected_generation: int, previous: Champion, back: Champion) -> bool:
        """Undo ``restore`` (its model was never published): ``back`` is the champion again and
        ``previous`` the last of the history, if the champion is still at
        ``expected_generation``."""
        return bool(self._undo_rollback(keys=[self._key, self._history, self._versions],
                                        args=[expected_generation, json.dumps(asdict(previous)),
                                              json.dumps(asdict(back))]))

    def clear(self, expected_generation: int) -> bool:
        """Remove the champion if it is still at ``expected_generation`` (a first promotion
        that could not be published)."""
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(self._key)
                current = self.get()
                if current is None or current.generation != expected_generation:
                    return False
                pipe.multi()
                pipe.delete(self._key)
                pipe.hdel(self._versions, str(current.version))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    # a promotion under way: intent -> publish -> commit ----------------------------------------
    def begin(self, intent: dict[str, object]) -> None:
        """Record a promotion about to change the champion (before its compare-and-set), so a
        selector that dies before its commit leaves it to ``Selector.reconcile``."""
        self._r.set(self._promotion, json.dumps(intent))

    def promotion(self) -> dict[str, object] | None:
        raw = self._r.get(self._promotion)
        return json.loads(raw) if raw else None

    def end(self) -> None:
        """Forget the promotion under way (it never changed the champion, or was undone)."""
        self._r.delete(self._promotion)

    def audit(self, decision: dict[str, object], candidate: str | None = None,
              event: dict[str, object] | None = None, commit: bool = False) -> None:
        """Append ``decision`` to the audit log and to its run's own list (which a decision
        serving a version keeps for good); with ``candidate``, record ``event`` (the
        decision as emitted) as that candidate's, in the same transaction, so a decision is
        either recorded in both or in neither. ``commit``: this decision ends the promotion
        under way (its record goes in the same transaction)."""
        record = json.dumps({"at": round(time.time(), 3), **decision})
        with self._r.pipeline(transaction=True) as pipe:
            pipe.rpush(self._audit, record)
            if decision.get("run_id"):  # each run's own, for reading one run without the log,
                # kept 30 days, or for good once one of them serves a version (its lineage)
                serves = decision.get("type") in SERVING and decision.get("version") is not None
                pipe.eval(_RUN_DECISION, 1, f"{self._audit}:run:{decision['run_id']}", record,
                          RUN_DECISIONS_TTL, "1" if serves else "0")
            if candidate is not None:
                pipe.hset(self._decided, candidate, json.dumps(event))
            if commit:
                pipe.delete(self._promotion)
            pipe.execute()

    def decided(self, candidate: str) -> dict[str, object] | None:
        """The decision recorded for ``candidate`` (as emitted), or None if never judged."""
        raw = self._r.hget(self._decided, candidate)
        return json.loads(raw) if raw else None

    def decisions(self, last: int | None = None) -> list[dict[str, object]]:
        """The audit log, oldest first (only the ``last`` ones if given)."""
        start = -last if last else 0
        return [json.loads(x) for x in self._r.lrange(self._audit, start, -1)]

    def decisions_of(self, run_id: str) -> list[dict[str, object]]:
        """The decisions on one run's models (kept as long as runs are, or for good once one
        of its models is a version)."""
        return [json.loads(x) for x in self._r.lrange(f"{self._audit}:run:{run_id}", 0, -1)]
