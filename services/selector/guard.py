"""The live guard: after each promotion it watches the new version serve and rolls it back
when it does worse in front of users than the version it replaced did.

It runs beside the selector (``Guard.run`` in a thread until its stop event is set), scraping
the model server's per-version statistics (``services.selector.live``) every poll, keeping a
bounded history of them. A champion made by a promotion opens a watch (kept in Redis: a
selector restarted mid-watch resumes it); its baseline is the previous version's last window
on the same server. The fast rule (errors in a row) is read at every poll; at the window's
end (so many answers or so many seconds) every rule is judged (``guard_rules.judge``). A
broken rule rolls the version back through ``Selector.rollback`` (compare-and-set, only if it
is still the champion), emits ``model.rolledback``, audits it and refuses the model's files
until approved; a version that passes is marked settled. Metrics out of reach are logged once
and waited out: the guard never rolls back for want of figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from events import Event, EventType, make_event
from events.errors import EventError
from events.payloads import GateRule, LiveFigures, ModelPromoted, ModelRolledBack
from services.selector.champion import Champion, ChampionStore
from services.selector.decisions import SOURCE
from services.selector.errors import LiveMetricsError, SelectorError
from services.selector.guard_rules import GuardThresholds, judge, streak_rule
from services.selector.guard_store import GuardStore, Watch
from services.selector.live import MetricsSource, Snapshot, VersionStats
from services.selector.scores import content

log = logging.getLogger(__name__)
MAX_HISTORY = 20_000  # snapshots kept at most, whatever the window


@dataclass(frozen=True)
class Window:
    requests: int = 500
    seconds: float = 900.0


class Guard:
    def __init__(self, store: ChampionStore, rollback: Callable[[str, int], Event],
                 emit: Callable[[Event], None], source: MetricsSource,
                 thresholds: GuardThresholds | None = None, window: Window | None = None,
                 poll_seconds: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        """``rollback(reason, version)``: the selector's (``Selector.rollback``); ``clock``:
        wall-clock seconds, the same clock ``source`` stamps its snapshots with."""
        self._store = store
        self._records = GuardStore(store.client, store.scope)
        self._rollback = rollback
        self._emit = emit
        self._source = source
        self._t = thresholds or GuardThresholds()
        self._window = window or Window()
        self._poll = poll_seconds
        self._clock = clock
        self._history: deque[Snapshot] = deque(maxlen=MAX_HISTORY)
        self._seen: int | None = None  # the champion generation last looked at
        self._unreachable: str | None = None  # the metrics' last problem, logged once
        self._observers: list[Callable[[int, dict[str, Any]], None]] = []

    def on_outcome(self, observer: Callable[[int, dict[str, Any]], None]) -> None:
        """Tell ``observer`` each watched version's outcome as it is recorded (the version,
        and its state as ``guard_store.guard_state`` reads it: settled or rolledback)."""
        self._observers.append(observer)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set. Redis away: logged, and polled again."""
        log.info("live guard on %s: window %d answers or %.0f s", self._source,
                 self._window.requests, self._window.seconds)
        while not stop.is_set():
            try:
                self.poll()
            except (redis.RedisError, OSError) as exc:
                log.warning("live guard: Redis out of reach (%s); trying again", exc)
            stop.wait(self._poll)

    def poll(self) -> str | None:
        """One look: scrape, open a watch on a new promotion, judge the watch under way.
        Returns what it did (``watching N``, ``settled N``, ``rolled back N``) or None."""
        watch = self._records.watch()
        if watch is not None and watch.intent is not None:  # a rollback under way: finished
            return self._finish(watch)  # first, whether or not the metrics can be read
        snapshot = self._scrape()
        if snapshot is None:
            return None
        champion = self._store.get()
        if champion is not None and champion.generation != self._seen:
            first_look = self._seen is None
            self._seen = champion.generation
            if watch is None or watch.version != champion.version:
                if watch is not None:
                    self._records.drop(watch.version, {"state": "superseded",
                                                       "by": champion.version})
                watch = None if first_look else self._open(champion, snapshot)
        if watch is None:
            return None
        if champion is None or champion.version != watch.version:
            self._records.drop(watch.version)  # replaced by someone else meanwhile
            return None
        return self._judge(watch, snapshot)

    def _scrape(self) -> Snapshot | None:
        try:
            snapshot = self._source.scrape()
        except LiveMetricsError as exc:
            if self._unreachable is None:
                log.warning("live guard: cannot read the model server's metrics (%s); still "
                            "watching, never rolling back for want of figures", exc)
            self._unreachable = str(exc)
            return None
        if self._unreachable is not None:
            log.info("live guard: the model server's metrics are readable again")
            self._unreachable = None
        self._history.append(snapshot)
        horizon = snapshot.at - 2 * self._window.seconds
        while len(self._history) > 2 and self._history[0].at < horizon:
            self._history.popleft()
        return snapshot

    def _open(self, champion: Champion, snapshot: Snapshot) -> Watch | None:
        previous, _ = self._store.previous()
        if previous is None or previous.generation != champion.generation - 1:
            return None  # a first model, or a rollback: nothing to go back to, or back already
        watch = Watch(champion.version, champion.generation, previous.version, champion.run_id,
                      champion.model_type, content(champion.model_uri), self._clock(),
                      VersionStats(),  # a new version number: everything it answered counts
                      self._baseline(previous.version, snapshot))
        self._records.open(watch)
        base = watch.baseline
        log.info("live guard: watching version %d against version %d (%s)", watch.version,
                 previous.version, f"baseline: {base.requests:.0f} answers" if base else
                 "no baseline")
        return watch

    def _baseline(self, version: int, now: Snapshot) -> VersionStats | None:
        """``version``'s last window in the history: back from its latest counters as far as
        ``window`` answers or seconds reach (its whole counters when the history is shorter)."""
        latest = now.of(version)
        if latest.requests <= 0:
            return None
        earliest = latest
        for snapshot in reversed(self._history):
            earlier = snapshot.of(version)
            window = latest.minus(earlier)
            if (window.requests > self._window.requests
                    or now.at - snapshot.at > self._window.seconds):
                return latest.minus(earliest)
            earliest = earlier
        return latest  # the history does not reach back a whole window: all it answered

    def _judge(self, watch: Watch, snapshot: Snapshot) -> str:
        window = snapshot.of(watch.version).minus(watch.start)
        fast = streak_rule(window, self._t)
        if not fast.passed:
            return self._roll_back(watch, window, judge(window, watch.baseline, self._t), fast)
        seconds = self._clock() - watch.opened_at
        if window.requests < self._window.requests and seconds < self._window.seconds:
            return f"watching {watch.version}"
        rules = judge(window, watch.baseline, self._t)
        broken = [r for r in rules if not r.passed]
        if broken:
            return self._roll_back(watch, window, rules, broken[0])
        state = {"state": "settled", "previous_version": watch.previous_version,
                 "rules": [r.model_dump(mode="json") for r in rules],
                 "window": self._figures(watch.version, window, seconds).model_dump(mode="json"),
                 "baseline": self._figures(watch.previous_version, watch.baseline).model_dump(
                     mode="json") if watch.baseline else None}
        self._records.drop(watch.version, state)
        log.info("live guard: version %d settled after %.0f answers in %.1f s", watch.version,
                 window.requests, seconds)
        self._tell(watch.version, state)
        return f"settled {watch.version}"

    def _roll_back(self, watch: Watch, window: VersionStats, rules: tuple[GateRule, ...],
                   rule: GateRule) -> str:
        """Record the intent (the rule and every figure) in the watch, then carry it out: a
        guard that dies on the way finishes it when it starts again (``_finish``)."""
        seconds = self._clock() - watch.opened_at
        reason = (f"live guard: version {watch.version} broke {rule.name} after "
                  f"{window.requests:.0f} answers in {seconds:.1f} s: {rule.detail}")
        baseline = (self._figures(watch.previous_version, watch.baseline)
                    if watch.baseline else None)
        intent = {"rule": rule.name, "reason": reason,
                  "rules": [r.model_dump(mode="json") for r in rules],
                  "window": self._figures(watch.version, window, seconds).model_dump(mode="json"),
                  "baseline": baseline.model_dump(mode="json") if baseline else None}
        return self._finish(self._records.intend(watch, intent))

    def _finish(self, watch: Watch) -> str:
        """Carry out the watch's intent from where it stopped: the rollback, then its records
        (refusal, audit, outcome), then ``model.rolledback`` (always id ``rolledback/<the
        version's generation>``, so a receiver drops one sent twice)."""
        intent = dict(watch.intent or {})
        if "restored_version" not in intent:
            restored = self._restore(watch, intent)
            if restored is None:
                return f"not rolled back {watch.version}"
            intent["restored_version"] = restored
            watch = self._records.intend(watch, intent)
        data = ModelRolledBack(
            version=watch.version, model_digest=watch.model_digest or "", run_id=watch.run_id,
            model_type=watch.model_type, restored_version=intent["restored_version"],
            previous_version=watch.previous_version, rule=intent["rule"],
            reason=intent["reason"], rules=intent["rules"], window=intent["window"],
            baseline=intent["baseline"])
        record = data.model_dump(mode="json")
        if not intent.get("recorded"):
            if not self._audited(watch):
                self._store.audit({"type": "rolledback", "seconds": 0.0, **record})
            watch = self._records.rolled_back(watch, {"state": "rolledback", **record})
        try:
            self._emit(make_event(EventType.MODEL_ROLLEDBACK, data, source=SOURCE,
                                  id=f"rolledback/{watch.generation}"))
        except (EventError, redis.RedisError, OSError) as exc:  # the watch keeps the intent:
            # sent again at the next poll
            log.warning("live guard: version %d was rolled back but model.rolledback could not "
                        "be sent (%s); sending it again at the next poll", watch.version, exc)
            return f"rolled back {watch.version}, event not sent"
        self._records.drop(watch.version)
        log.warning("%s; version %d serves the previous model (version %d's)", data.reason,
                    data.restored_version, data.previous_version)
        self._tell(watch.version, {"state": "rolledback", **record})
        return f"rolled back {watch.version}"

    def _restore(self, watch: Watch, intent: dict[str, Any]) -> int | None:
        """The version the previous model serves as: rolled back now through
        ``Selector.rollback``, or found already rolled back by a guard that died after doing
        it. None when the version was replaced otherwise (its outcome recorded)."""
        champion = self._store.get()
        if champion is not None and (champion.generation, champion.version) == (
                watch.generation, watch.version):
            try:
                restored = self._rollback(str(intent["reason"]), watch.version)
            except SelectorError as exc:
                problem = str(exc)
            else:
                assert isinstance(restored.data, ModelPromoted)
                return restored.data.version
        else:
            problem = (f"version {champion.version} is the champion" if champion
                       else "there is no champion")
        done = self._rolled_back_before(watch)
        if done is not None:
            return done
        log.warning("live guard: version %d broke a rule but was not rolled back: %s",
                    watch.version, problem)
        self._records.drop(watch.version, {"state": "not rolled back", "rule": intent["rule"],
                                           "reason": f"{intent['reason']}; {problem}"})
        return None

    def _rolled_back_before(self, watch: Watch) -> int | None:
        """The version number of a rollback of ``watch.version`` already made (by a guard
        that died before recording it), from the audit; its ``model.promoted`` sent again
        (same id: dropped if it was sent)."""
        previous = self._store.champion(watch.previous_version)
        decisions = self._store.decisions_of(previous.run_id) if previous else []
        done = next((d for d in reversed(decisions) if d.get("type") == "rollback"
                     and d.get("champion_version") == watch.version), None)
        if done is None:
            return None
        log.warning("live guard: version %d had been rolled back (as version %s) by a guard "
                    "that stopped before finishing; finishing it", watch.version, done["version"])
        fields = {k: v for k, v in done.items() if k not in ("type", "seconds", "at")}
        self._emit(make_event(EventType.MODEL_PROMOTED, ModelPromoted(**fields), source=SOURCE,
                              id=f"rollback/{watch.generation}"))
        return int(done["version"])

    def _audited(self, watch: Watch) -> bool:
        return any(d.get("type") == "rolledback" and d.get("version") == watch.version
                   for d in self._store.decisions_of(watch.run_id))

    def _tell(self, version: int, state: dict[str, Any]) -> None:
        for observer in self._observers:
            try:  # telling a person must never cost the guard
                observer(version, state)
            except Exception:
                log.debug("could not tell of version %d's outcome", version, exc_info=True)

    @staticmethod
    def _figures(version: int, stats: VersionStats, seconds: float = 0.0) -> LiveFigures:
        return LiveFigures(version=version, requests=int(stats.requests),
                           errors=int(stats.errors), error_rate=round(stats.error_rate, 6),
                           p99_seconds=stats.p99_seconds,
                           classes=tuple(int(stats.classes.get(k, 0))
                                         for k in range(max(stats.classes, default=-1) + 1)),
                           seconds=round(seconds, 3))
