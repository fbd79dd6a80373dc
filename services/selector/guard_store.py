"""The live guard's records, one owner: the watch under way (kept in Redis, so a selector
restarted mid-watch resumes it), each watched version's outcome (settled or rolled back, with
its figures) and the model files' digests it rolled back, refused until a person approves one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import redis

from events.payloads import LiveFigures
from services.selector.champion import ChampionStore, scoped_key
from services.selector.errors import SelectorError
from services.selector.live import VersionStats, from_json, to_json
from services.selector.scores import content


@dataclass(frozen=True)
class Watch:
    """A promoted version under watch: its counters when the watch opened (``start``) and the
    previous version's last window on the same server (``baseline``, None: none known).
    ``intent``: a rollback decided and not yet finished (recorded before the rollback, so a
    guard that dies on the way finishes it on resume): the rule broken, the reason, every
    rule and both windows' figures (``ModelRolledBack``'s fields as JSON), then
    ``rolling`` (a version a rollback serves an unsettled model as, to roll back in turn),
    ``restored_version`` once a settled model serves again and ``recorded`` once the
    refusal, the audit and the outcome are written (only the event is left to send).
    ``previous_version``: the last settled version (the baseline's, what a rollback goes back
    to); ``between``: the versions promoted after it and replaced before they settled.
    ``model_digest``: None until the model's files could be read (digested again later)."""

    version: int
    generation: int
    previous_version: int
    run_id: str
    model_type: str
    model_digest: str | None
    opened_at: float  # wall-clock seconds
    start: VersionStats
    baseline: VersionStats | None
    intent: dict[str, Any] | None = None
    between: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "start": to_json(self.start),
                           "baseline": to_json(self.baseline) if self.baseline else None})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Watch:
        d = json.loads(raw)
        return cls(**{**d, "start": from_json(d["start"]), "between": tuple(d.get("between", ())),
                      "baseline": from_json(d["baseline"]) if d["baseline"] else None})


class GuardStore:
    def __init__(self, client: redis.Redis, scope: str) -> None:
        self._r = client
        self._watch = scoped_key(scope, "guard:watch")
        self._states = scoped_key(scope, "guard:versions")  # version -> outcome
        self._refused = scoped_key(scope, "guard:refused")  # model digest -> the rollback
        self._seen = scoped_key(scope, "guard:seen")  # the champion generation last looked at

    # the watch under way ------------------------------------------------------------------------
    def watch(self) -> Watch | None:
        raw = self._r.get(self._watch)
        return Watch.from_json(raw) if raw else None

    def seen(self) -> int | None:
        """The champion generation the guard last looked at (None: it never looked)."""
        raw = self._r.get(self._seen)
        return int(raw) if raw is not None else None

    def see(self, generation: int) -> None:
        self._r.set(self._seen, generation)

    def open(self, watch: Watch, replaced: tuple[int, dict[str, Any]] | None = None) -> None:
        """Watch ``watch``; ``replaced``: the version whose watch it replaces and its outcome,
        recorded in the same transaction."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.set(self._watch, watch.to_json())
            pipe.hset(self._states, str(watch.version), json.dumps(
                {"state": "watching", "at": round(time.time(), 3),
                 "previous_version": watch.previous_version, "between": list(watch.between)}))
            if replaced is not None:
                pipe.hset(self._states, str(replaced[0]),
                          json.dumps({"at": round(time.time(), 3), **replaced[1]}))
            pipe.execute()

    def intend(self, watch: Watch, intent: dict[str, Any]) -> Watch | None:
        """Record what the guard is about to do to the watched version (or how far it got),
        before doing it; returns the watch as recorded, or None when the watch under way is no
        longer ``watch.version``'s (compare-and-set: nothing written then)."""
        intended = replace(watch, intent=intent)
        return intended if self._swap(watch.version, intended.to_json()) else None

    def rolled_back(self, watch: Watch, state: dict[str, Any]) -> Watch:
        """A rollback's records, in one transaction: the model's files refused until approved,
        the version's outcome, and the watch's intent marked ``recorded``."""
        recorded = replace(watch, intent={**(watch.intent or {}), "recorded": True})
        with self._r.pipeline(transaction=True) as pipe:
            if watch.model_digest:
                pipe.hset(self._refused, watch.model_digest, json.dumps({
                    "at": round(time.time(), 3), "version": watch.version,
                    "rule": state.get("rule"), "reason": state.get("reason"),
                    "run_id": watch.run_id, "model_type": watch.model_type}))
            pipe.hset(self._states, str(watch.version),
                      json.dumps({"at": round(time.time(), 3), **state}))
            pipe.set(self._watch, recorded.to_json())
            pipe.execute()
        return recorded

    def drop(self, version: int, state: dict[str, object] | None = None) -> None:
        """End the watch of ``version`` (if it is the one under way: compare-and-delete),
        recording ``state``."""
        self._swap(version, None, state)

    def _swap(self, version: int, value: str | None,
              state: dict[str, object] | None = None) -> bool:
        """Set the watch to ``value`` (None: delete it) if the one under way is ``version``'s,
        and record ``state`` as ``version``'s outcome either way, atomically (WATCH/MULTI)."""
        while True:
            with self._r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._watch)
                    raw = pipe.get(self._watch)
                    ours = raw is not None and Watch.from_json(raw).version == version
                    pipe.multi()
                    if ours and value is None:
                        pipe.delete(self._watch)
                    elif ours:
                        pipe.set(self._watch, value)
                    if state is not None:
                        pipe.hset(self._states, str(version),
                                  json.dumps({"at": round(time.time(), 3), **state}))
                    pipe.execute()
                    return ours
                except redis.WatchError:
                    continue  # changed meanwhile: read it again

    def state(self, version: int) -> dict[str, object] | None:
        raw = self._r.hget(self._states, str(version))
        return json.loads(raw) if raw else None

    def states(self, versions: list[int]) -> dict[int, dict[str, object]]:
        """The outcomes of ``versions`` the guard watched, in one read."""
        if not versions:
            return {}
        found = self._r.hmget(self._states, [str(v) for v in versions])
        return {v: json.loads(raw) for v, raw in zip(versions, found) if raw}

    # rolled-back models -------------------------------------------------------------------------
    def refuse(self, digest: str, record: dict[str, object]) -> None:
        self._r.hset(self._refused, digest, json.dumps({"at": round(time.time(), 3), **record}))

    def refused(self) -> dict[str, dict[str, object]]:
        """Every refused digest and the rollback that refused it."""
        return {k.decode() if isinstance(k, bytes) else k: json.loads(v)
                for k, v in self._r.hgetall(self._refused).items()}

    def refusal(self, model_uri: str) -> str | None:
        """Why the model at ``model_uri`` may not be judged (its files are a model the guard
        rolled back), or None."""
        if not self._r.hlen(self._refused):
            return None
        digest = content(model_uri)
        raw = self._r.hget(self._refused, digest) if digest else None
        if raw is None:
            return None
        r = json.loads(raw)
        return (f"refused: this model's files ({str(digest)[:12]}) were version {r['version']}, "
                f"rolled back by the live guard ({r['rule']}: {r['reason']}); "
                f"`retrain approve --version {r['version']}` lets it be judged again")

    def allow(self, version: int) -> tuple[str, dict[str, object]] | None:
        """Forget the refusal of the model that was ``version``; returns its digest and the
        rollback that refused it, or None when no refused model was that version."""
        for digest, record in self.refused().items():
            if record.get("version") == version and self._r.hdel(self._refused, digest):
                return digest, record
        return None


def figures(version: int, stats: VersionStats, seconds: float = 0.0) -> LiveFigures:
    """A window's figures as events and records show them."""
    return LiveFigures(version=version, requests=int(stats.requests), errors=int(stats.errors),
                       error_rate=round(stats.error_rate, 6), p99_seconds=stats.p99_seconds,
                       classes=tuple(int(stats.classes.get(k, 0))
                                     for k in range(max(stats.classes, default=-1) + 1)),
                       seconds=round(seconds, 3))


def guard_state(client: redis.Redis, scope: str, version: int) -> dict[str, object] | None:
    """What the live guard made of ``version``: ``state`` watching, settled (with ``window``
    and ``baseline`` figures) or rolledback (``rule``, ``reason``, ``rules``, figures), or
    None for a version it never watched (a first model, a rollback, the guard off)."""
    return GuardStore(client, scope).state(version)


def guard_states(client: redis.Redis, scope: str,
                 versions: list[int]) -> dict[int, dict[str, object]]:
    """``guard_state`` of several versions in one read (those it never watched left out)."""
    return GuardStore(client, scope).states(versions)


def approve(store: ChampionStore, version: int, by: str, note: str = "") -> dict[str, object]:
    """Let the model the guard rolled back as ``version`` be judged again, audited with who
    approved it (``by``, and ``note`` when given); raises ``SelectorError`` saying why when
    no refused model was that version."""
    records = GuardStore(store.client, store.scope)
    allowed = records.allow(version)
    if allowed is None:
        state = records.state(version)
        said = ("its model was approved already" if state and state.get("state") == "rolledback"
                else f"the live guard's record of it: {state.get('state')}" if state
                else "the live guard never watched it")
        raise SelectorError(f"version {version} is not a model the live guard rolled back and "
                            f"still refuses ({said}); nothing to approve")
    digest, record = allowed
    entry = {"type": "approved", "version": version, "model_digest": digest, "by": by,
             "run_id": record.get("run_id"), "model_type": record.get("model_type"),
             "rule": record.get("rule"),
             "reason": f"version {version}'s model approved by {by}: judged again when it "
                       f"arrives (rolled back for {record.get('rule')})"
                       + (f"; note: {note}" if note else "")}
    if note:
        entry["note"] = note
    store.audit(entry)
    return entry
