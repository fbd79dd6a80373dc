"""The champion record in Redis, replaced only by compare-and-set (atomic, monotonic)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

KEY = "retrain:champion"
HISTORY = "retrain:champion:history"
AUDIT = "retrain:selector:audit"

# Replace the champion only if its generation is still the one the caller read.
_CAS = """
local current = redis.call('GET', KEYS[1])
local generation = 0
if current then generation = cjson.decode(current)['generation'] end
if generation ~= tonumber(ARGV[1]) then return 0 end
if current then redis.call('RPUSH', KEYS[2], current) end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Champion:
    version: int
    model_uri: str
    model_type: str
    accuracy: float
    dataset_digest: str
    dataset_uri: str
    run_id: str
    generation: int


class ChampionStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._cas = client.register_script(_CAS)

    def get(self) -> Champion | None:
        raw = self._r.get(KEY)
        return Champion(**json.loads(raw)) if raw else None

    def replace(self, expected_generation: int, new: Champion) -> bool:
        """Atomically install ``new`` if the champion is still at ``expected_generation``."""
        return bool(self._cas(keys=[KEY, HISTORY], args=[expected_generation, json.dumps(asdict(new))]))

    def audit(self, decision: dict[str, object]) -> None:
        self._r.rpush(AUDIT, json.dumps(decision))

    def decisions(self) -> list[dict[str, object]]:
        return [json.loads(x) for x in self._r.lrange(AUDIT, 0, -1)]
