"""The live guard: after each promotion it watches the new version serve and rolls it back
when it does worse in front of users than the version it replaced did.

It runs beside the selector (``Guard.run`` in a thread until its stop event is set), scraping
the model server's per-version statistics (``services.selector.live``) every poll, keeping a
bounded history of them. A champion made by a promotion opens a watch (kept in Redis: a
selector restarted mid-watch resumes it); its baseline is the previous version's last window
on the same server, or, over a version still under watch, that watch's (the last settled
version's, what a rollback goes back to). The fast rule (errors in a row) is read at every poll; at the window's
end (so many answers or so many seconds) every rule is judged (``guard_rules.judge``). A
broken rule rolls the version back through ``Selector.rollback`` (compare-and-set, only if it
is still the champion), emits ``model.rolledback``, audits it and refuses the model's files
until approved; a version that passes is marked settled (never on fewer than ``min_requests``
answers: it is watched on). Metrics out of reach are logged once and waited out: no rule is
judged on figures it could not read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from core.backoff import Backoff
from events import Event, EventType, make_event
from events.errors import EventError
from events.payloads import GateRule, ModelPromoted, ModelRolledBack
from services.selector.champion import Champion, ChampionStore
from services.selector.decisions import SOURCE
from services.selector.errors import LiveMetricsError, NothingToRollBackError, SelectorError
from services.selector.guard_rules import GuardThresholds, judge, streak_rule
from services.selector.guard_store import GuardStore, Watch, figures
from services.selector.live import MetricsSource, Snapshot, VersionStats
from services.selector.scores import content

log = logging.getLogger(__name__)


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
        # the last minute's snapshots, then one a second: each reduced to the versions a
        # baseline can need (the champion's, the watched one's)
        self._recent: deque[Snapshot] = deque()
        self._older: deque[Snapshot] = deque()
        self._unreachable: str | None = None  # the metrics' last problem, logged once
        self._short: int | None = None  # the version said to be waiting for answers
        self._retry = Backoff(first=max(poll_seconds, 1.0), cap=60.0)
        self._retry_at = 0.0  # a failed rollback is tried again from then
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
            if self._clock() < self._retry_at:  # first, whether or not the metrics can be read
                return f"rolling back {watch.version}: trying again later"
            return self._finish(watch)
        snapshot = self._scrape()
        if snapshot is None:
            return None
        champion = self._store.get()
        if champion is not None and champion.generation != self._records.seen():
            # a champion not looked at yet (by this guard or one before it, in Redis)
            watch = self._promoted(champion, watch, snapshot)
            self._records.see(champion.generation)
        self._keep(snapshot, champion, watch)
        if watch is None:
            return None
        if champion is None or champion.version != watch.version:
            self._records.drop(watch.version)  # replaced by someone else meanwhile
            return None
        return self._judge(watch, snapshot)

    def _promoted(self, champion: Champion, watch: Watch | None,
                  snapshot: Snapshot) -> Watch | None:
        """The watch once ``champion`` serves: ``watch`` if it is the same version (a
        failed promotion over it), else a new one (a promotion) or none (a rollback)."""
        if watch is not None and watch.version == champion.version:
            return watch
        replaced = None if watch is None else (watch.version, {
            "state": "superseded", "by": champion.version,
            "reason": f"replaced by version {champion.version} before its window ended: "
                      "never settled"})
        opened = self._open(champion, snapshot, watch, replaced)
        if opened is None and watch is not None:
            self._records.drop(watch.version, replaced[1] if replaced else None)
        return opened

    def _scrape(self) -> Snapshot | None:
        try:
            snapshot = self._source.scrape()
        except LiveMetricsError as exc:
            if self._unreachable is None:
                log.warning("live guard: cannot read the model server's metrics (%s); still "
                            "watching: no rule is judged and nothing rolled back until they "
                            "can be read again", exc)
            self._unreachable = str(exc)
            return None
        if self._unreachable is not None:
            log.info("live guard: the model server's metrics are readable again")
            self._unreachable = None
        return snapshot

    def _keep(self, snapshot: Snapshot, champion: Champion | None, watch: Watch | None) -> None:
        """Keep ``snapshot`` for baselines to come, reduced to the champion's and the watched
        version's counters; beyond the last minute, one snapshot a second; nothing older than
        two windows."""
        versions = {v for v in (champion and champion.version, watch and watch.version) if v}
        self._recent.append(Snapshot(snapshot.at, {v: snapshot.versions[v] for v in versions
                                                   if v in snapshot.versions}))
        while len(self._recent) > 1 and self._recent[0].at < snapshot.at - 60.0:
            moved = self._recent.popleft()
            if not self._older or moved.at - self._older[-1].at >= 1.0:
                self._older.append(moved)
        horizon = snapshot.at - 2 * self._window.seconds
        while len(self._older) > 1 and self._older[0].at < horizon:
            self._older.popleft()

    def _open(self, champion: Champion, snapshot: Snapshot, superseded: Watch | None,
              replaced: tuple[int, dict[str, Any]] | None) -> Watch | None:
        """A watch of ``champion`` if a promotion made it. Over a version still under watch
        (``superseded``), it inherits that watch's baseline: the last settled version's
        window, the version a rollback goes back to."""
        previous, _ = self._store.previous()
        if previous is None or previous.generation != champion.generation - 1:
            return None  # a first model, or a rollback: nothing to go back to, or back already
        digest = content(champion.model_uri)  # None while its files are being put in place
        if superseded is not None and superseded.version in {
                c.version for c in self._store.history()}:
            between = superseded.between + (superseded.version,) + (
                (previous.version,) if previous.version != superseded.version else ())
            watch = Watch(champion.version, champion.generation, superseded.previous_version,
                          champion.run_id, champion.model_type, digest, self._clock(),
                          VersionStats(), superseded.baseline, between=between)
        else:
            watch = Watch(champion.version, champion.generation, previous.version,
                          champion.run_id, champion.model_type, digest, self._clock(),
                          VersionStats(),  # a new version number: everything it answered counts
                          self._baseline(previous.version, snapshot))
        self._records.open(watch, replaced)
        base = watch.baseline
        log.info("live guard: watching version %d against version %d (%s)%s", watch.version,
                 watch.previous_version, f"baseline: {base.requests:.0f} answers" if base else
                 "no baseline", f"; versions {list(watch.between)} replaced before settling"
                 if watch.between else "")
        return watch

    def _baseline(self, version: int, now: Snapshot) -> VersionStats | None:
        """``version``'s last window in the history: back from its latest counters to the
        first snapshot that reaches ``window`` answers or seconds (its whole counters when the
        history is shorter)."""
        latest = now.of(version)
        if latest.requests <= 0:
            return None
        for snapshot in (*reversed(self._recent), *reversed(self._older)):
            window = latest.minus(snapshot.of(version))
            if (window.requests >= self._window.requests
                    or now.at - snapshot.at >= self._window.seconds):
                return window  # the step that reaches the limit, never an empty window
        return latest  # the history does not reach back a whole window: all it answered

    def _judge(self, watch: Watch, snapshot: Snapshot) -> str:
        window = snapshot.of(watch.version).minus(watch.start)
        fast = streak_rule(window, self._t)
        if not fast.passed:
            return self._roll_back(watch, window, judge(window, watch.baseline, self._t), fast)
        seconds = self._clock() - watch.opened_at
        if window.requests < self._window.requests and seconds < self._window.seconds:
            return f"watching {watch.version}"
        if window.requests < self._t.min_requests:  # never settled on nothing
            if self._short != watch.version:
                self._short = watch.version
                log.info("live guard: version %d's window ended with %.0f answers < %d: still "
                         "watching until it has answered %d", watch.version, window.requests,
                         self._t.min_requests, self._t.min_requests)
            return f"watching {watch.version}"
        rules = judge(window, watch.baseline, self._t)
        broken = [r for r in rules if not r.passed]
        if broken:
            return self._roll_back(watch, window, rules, broken[0])
        state = {"state": "settled", "previous_version": watch.previous_version,
                 "rules": [r.model_dump(mode="json") for r in rules],
                 "window": figures(watch.version, window, seconds).model_dump(mode="json"),
                 "baseline": figures(watch.previous_version, watch.baseline).model_dump(
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
        baseline = (figures(watch.previous_version, watch.baseline)
                    if watch.baseline else None)
        intent = {"rule": rule.name, "reason": reason,
                  "rules": [r.model_dump(mode="json") for r in rules],
                  "window": figures(watch.version, window, seconds).model_dump(mode="json"),
                  "baseline": baseline.model_dump(mode="json") if baseline else None}
        intended = self._records.intend(self._digested(watch), intent)
        if intended is None:
            return f"not rolled back {watch.version}: its watch was replaced"
        return self._finish(intended)

    def _digested(self, watch: Watch) -> Watch:
        """``watch`` with its model's digest, read now if it could not be at the opening;
        without one the model cannot be refused if it arrives again (logged)."""
        if watch.model_digest is not None:
            return watch
        served = self._store.champion(watch.version)
        digest = content(served.model_uri) if served else None
        if digest is None:
            log.warning("live guard: version %d's model files cannot be read (%s): it cannot "
                        "be refused if it arrives again", watch.version,
                        served.model_uri if served else "no record of it")
        return replace(watch, model_digest=digest)

    def _finish(self, watch: Watch) -> str:
        """Carry out the watch's intent from where it stopped: the rollback, then its records
        (refusal, audit, outcome), then ``model.rolledback`` (always id ``rolledback/<the
        version's generation>``, so a receiver drops one sent twice)."""
        intent = dict(watch.intent or {})
        if "restored_version" not in intent:
            restored = self._restore(watch, intent)
            if isinstance(restored, str):
                return restored
            intent["restored_version"] = restored
            intended = self._records.intend(self._digested(watch), intent)
            if intended is None:
                return f"rolled back {watch.version}: its watch was replaced meanwhile"
            watch = intended
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
        log.warning("%s; version %d serves the last settled model (version %d's)", data.reason,
                    data.restored_version, data.previous_version)
        self._tell(watch.version, {"state": "rolledback", **record})
        return f"rolled back {watch.version}"

    def _restore(self, watch: Watch, intent: dict[str, Any]) -> int | str:
        """The version the last settled model serves as: rolled back now through
        ``Selector.rollback`` (again while the model restored is one replaced before it
        settled, each step recorded in ``intent`` as ``rolling``), or found already rolled
        back by a guard that died after doing it. A string saying what happened when it
        could not be: tried again later (a failed publish), or given up (the version was
        replaced otherwise; its outcome recorded)."""
        version = int(intent.get("rolling", watch.version))
        while True:
            champion = self._store.get()
            if champion is not None and champion.version == version:
                try:
                    restored = self._rollback(str(intent["reason"]), version).data
                except NothingToRollBackError as exc:
                    if version != watch.version:
                        return version  # nothing further back: as far as it could go
                    return self._not_rolled_back(watch, intent, str(exc))
                except SelectorError as exc:
                    if self._still(version):
                        return self._later(watch, exc)
                    continue  # replaced meanwhile: look again
                assert isinstance(restored, ModelPromoted)
            else:
                restored = self._rolled_back_before(version)
                if restored is None:
                    if version != watch.version:
                        return version  # an unsettled model restored, then replaced by hand
                    return self._not_rolled_back(watch, intent, (
                        f"version {champion.version} is the champion" if champion
                        else "there is no champion"))
            self._retry.reset()
            self._retry_at = 0.0
            if not self._unsettled(watch, restored.model_uri):
                return restored.version
            log.warning("live guard: version %d serves the model of a version replaced before "
                        "it settled; rolling it back too", restored.version)
            version = intent["rolling"] = restored.version
            if self._records.intend(watch, intent) is None:
                return f"rolled back {watch.version}: its watch was replaced meanwhile"

    def _still(self, version: int) -> bool:
        champion = self._store.get()
        return champion is not None and champion.version == version

    def _later(self, watch: Watch, exc: SelectorError) -> str:
        delay = self._retry.next()
        self._retry_at = self._clock() + delay
        log.warning("live guard: version %d could not be rolled back (%s); trying again in "
                    "%.0f s", watch.version, exc, delay)
        return f"rollback of {watch.version} failed, trying again in {delay:.0f} s"

    def _not_rolled_back(self, watch: Watch, intent: dict[str, Any], problem: str) -> str:
        log.warning("live guard: version %d broke a rule but was not rolled back: %s",
                    watch.version, problem)
        self._records.drop(watch.version, {"state": "not rolled back", "rule": intent["rule"],
                                           "reason": f"{intent['reason']}; {problem}"})
        return f"not rolled back {watch.version}"

    def _unsettled(self, watch: Watch, model_uri: str) -> bool:
        """Whether ``model_uri`` is the model of a version replaced before it settled."""
        return any((c := self._store.champion(v)) is not None and c.model_uri == model_uri
                   for v in watch.between)

    def _rolled_back_before(self, version: int) -> ModelPromoted | None:
        """The rollback of ``version`` already made (by a guard that died before recording
        it), from the audit; its ``model.promoted`` sent again (same id: dropped if it was
        sent)."""
        done = next((d for d in reversed(self._store.decisions(last=200))
                     if d.get("type") == "rollback" and d.get("champion_version") == version),
                    None)
        if done is None:
            return None
        log.warning("live guard: version %d had been rolled back (as version %s) by a guard "
                    "that stopped before finishing; finishing it", version, done["version"])
        data = ModelPromoted(**{k: v for k, v in done.items() if k not in ("type", "seconds",
                                                                          "at")})
        served = self._store.champion(version)
        self._emit(make_event(EventType.MODEL_PROMOTED, data, source=SOURCE,
                              id=f"rollback/{served.generation if served else version}"))
        return data

    def _audited(self, watch: Watch) -> bool:
        return any(d.get("type") == "rolledback" and d.get("version") == watch.version
                   for d in self._store.decisions_of(watch.run_id))

    def _tell(self, version: int, state: dict[str, Any]) -> None:
        for observer in self._observers:
            try:  # telling a person must never cost the guard
                observer(version, state)
            except Exception:
                log.debug("could not tell of version %d's outcome", version, exc_info=True)
