"""The selector: each ``model.trained`` is judged as it arrives (or, with a quorum or deadline
policy, each round's best when the round closes) by the promotion gate
(``services.selector.policy.gate``: better on the new test split, not worse on the pinned
evaluation set, no class dropping); promotions are compare-and-set."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from dataset.pinned import Pinned
from events import Event, EventType, make_event
from events.payloads import ModelPromoted, ModelRejected, ModelTrained, TrainingFailed
from services.selector.admission import Admission
from services.selector.backends import PromotionBackend, Staged
from services.selector.champion import Champion, ChampionStore
from services.selector.decisions import SOURCE, candidate_id, promoted, recorded, rejected
from services.selector.decisions import intent as promotion_intent
from services.selector.errors import EvaluationError
from services.selector.guard_store import GuardStore
from services.selector.hooks import telling_promotions
from services.selector.judgements import Judgements
from services.selector.measure import measure, pinned_for
from services.selector.policy import ChampionPolicy, Figures, Verdict, gate, rank_key
from services.selector.rollback import ROLLBACK, roll_back
from services.selector.rollback import finish as finish_rollback
from services.selector.rounds import RoundStore
from services.selector.scores import Scores, Scoring

log = logging.getLogger(__name__)
ALL_ENDED = "the end of the run's trainings"


class Selector:
    def __init__(
        self,
        store: ChampionStore,
        backend: PromotionBackend,
        evaluator: Scoring,
        emit: Callable[[Event], None],
        policy: ChampionPolicy = ChampionPolicy(),
        admission: Admission | None = None,
        on_promoted: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._admission = admission
        self._backend = backend
        self._evaluator = Scores(store.client, store.scope, evaluator)  # by model content
        self._judgements = Judgements(store.client, store.scope, policy)
        # on_promoted: told the run of each model made a champion version, as it is emitted
        self._emit = emit if on_promoted is None else telling_promotions(emit, on_promoted)
        self._policy = policy
        self._lock = threading.Lock()
        self._rounds = RoundStore(store.client, store.scope)
        self._guard = GuardStore(store.client, store.scope)  # digests the live guard refused

    def handle(self, event: Event) -> Event | None:
        """Evaluate the candidate, compare it fairly with the champion, promote or reject.
        Returns the decision, or None while the candidate waits for its round to close. A
        ``training.failed`` only counts towards its run's round having ended (None)."""
        if event.type is EventType.TRAINING_FAILED:
            failed = event.data
            assert isinstance(failed, TrainingFailed)
            self._ended(failed.run_id, failed.model_type, "failed", failed.round_size)
            return None
        if event.type is not EventType.MODEL_TRAINED:
            raise ValueError(f"selector consumes model.trained, not {event.type.value}")
        trained = event.data
        assert isinstance(trained, ModelTrained)
        started = time.perf_counter()
        earlier = self._store.decided(candidate_id(trained))
        if earlier is not None:  # redelivered (a crash after the decision, a sender's retry)
            log.info("%s/%s already judged: %s again", trained.run_id, trained.model_type,
                     earlier["type"])
            decision = recorded(earlier)
            self._emit(decision)
            return decision
        problem = self.refusal(trained)
        if problem is not None:
            return self.refuse(event, problem)
        withdrawn = self._guard.refusal(trained.model_uri)
        if withdrawn is not None:  # rolled back once by the guard: not judged until approved
            if self._policy.rounds:
                self._ended(trained.run_id, trained.model_type, "rolled back", trained.round_size)
            return self._record(rejected(trained, self._store.get(), withdrawn), started)
        try:
            again = self._judgements.recall(trained, self._store.get(),
                                            _digest(pinned_for(trained)), SOURCE)
            if again is not None:  # the same content, champion and pinned set: not loaded again
                if self._policy.rounds:
                    self._ended(trained.run_id, trained.model_type, "already judged",
                                trained.round_size)
                return self._record(again, started)
            if not self._policy.rounds:
                return self._decide(trained, started)
            candidate = self._evaluator.score(trained.model_uri, trained.dataset_uri).accuracy
        except EvaluationError as exc:  # judged, not retried: a broken model stays broken
            decision = self._unscored(trained, exc, started)
            if self._policy.rounds:
                self._ended(trained.run_id, trained.model_type, "cannot be scored",
                            trained.round_size)
            return decision
        return self._join_round(trained, candidate, started)

    def _unscored(self, trained: ModelTrained, exc: EvaluationError, started: float,
                  note: str = "") -> Event:
        log.warning("%s/%s cannot be scored: %s", trained.run_id, trained.model_type, exc)
        return self._record(rejected(trained, self._store.get(), f"{note}cannot be scored: {exc}"),
                            started)

    def refusal(self, trained: ModelTrained) -> str | None:
        """Why this candidate may not even be looked at (a model or a test split that is not
        this project's), or None."""
        return self._admission.problem(trained) if self._admission else None

    def refuse(self, event: Event, problem: str) -> Event:
        """Audit and emit the refusal of ``event`` (``problem``: what ``refusal`` said)."""
        trained = event.data
        assert isinstance(trained, ModelTrained)
        started = time.perf_counter()
        log.warning("refused %s/%s from %s: %s", trained.run_id, trained.model_type,
                    event.source, problem)
        # an id of its own: a refusal must never take the id of the candidate's real
        # decision, which receivers would then drop as a duplicate
        refused = make_event(EventType.MODEL_REJECTED,
                             rejected(trained, None, f"refused: {problem}").data,
                             source=SOURCE, id=f"refused/{event.source}/{event.id}")
        return self._record(refused, started, refused_from=event.source)

    # rounds ------------------------------------------------------------------------------------
    def _join_round(self, trained: ModelTrained, candidate: float, started: float) -> Event | None:
        joined = self._rounds.join(trained, candidate, trained.round_size)
        if joined.late:
            return self._judge(trained, started, "arrived after its round closed; ")
        if joined.entries == 1 and self._policy.deadline_seconds is not None:
            self._arm_deadline(trained.run_id, self._policy.deadline_seconds)
        if self._policy.quorum is not None and joined.entries >= self._policy.quorum:
            return self.close_round(trained.run_id, "quorum").get(trained.model_type)
        if joined.complete():
            return self.close_round(trained.run_id, ALL_ENDED).get(trained.model_type)
        return None

    def _ended(self, run_id: str, model_type: str, why: str, size: int | None) -> None:
        if self._policy.rounds and self._rounds.ended(run_id, model_type, why, size).complete():
            self.close_round(run_id, ALL_ENDED)

    def _arm_deadline(self, run_id: str, seconds: float) -> None:
        timer = threading.Timer(seconds, self.close_round, args=(run_id, "deadline"))
        timer.daemon = True
        timer.start()

    def resume_rounds(self) -> int:
        """After a restart: re-arm the deadline of every round still open (one that is past
        closes now); returns how many rounds are open."""
        open_rounds = self._rounds.open_rounds()
        if self._policy.deadline_seconds is not None:
            for run_id, opened in open_rounds.items():
                left = opened + self._policy.deadline_seconds - time.time()
                self._arm_deadline(run_id, max(0.0, left))
        if open_rounds:
            log.info("%d round(s) still open: %s", len(open_rounds), ", ".join(open_rounds))
        return len(open_rounds)

    def close_round(self, run_id: str, why: str = "closed") -> dict[str, Event]:
        """Judge the round's best against the champion by the gate, and reject the others
        (each with its own figures and the gate's rules, for comparison); returns the
        decisions by model type. Closing a closed or unknown round does nothing."""
        members = self._rounds.close(run_id)
        if not members:
            return {}
        started = time.perf_counter()
        members.sort(key=lambda m: rank_key(m.entry))
        best, rest = members[0], members[1:]
        note = f"round {run_id} closed by {why} with {len(members)} model(s); best of the round; "
        decisions = {best.trained.model_type: self._judge(best.trained, started, note)}
        for member in rest:
            reason = (f"round {run_id} closed by {why}: {best.trained.model_type} "
                      f"{best.entry.accuracy:.4f} beat it ({member.entry.accuracy:.4f})")
            champion = self._store.get()
            try:
                figures = measure(self._evaluator, member.trained, champion,
                                  pinned_for(member.trained))
                rules = gate(self._policy, figures).rules
            except EvaluationError:
                figures, rules = None, ()
            decisions[member.trained.model_type] = self._record(rejected(
                member.trained, champion, reason, figures, rules, member.entry.accuracy), started)
        return decisions

    # one decision ------------------------------------------------------------------------------
    def _judge(self, trained: ModelTrained, started: float, note: str) -> Event:
        """A scored candidate's decision; one that cannot be scored (its model, the champion's,
        the pinned set) is rejected saying why."""
        try:
            return self._decide(trained, started, note, scored=True)
        except EvaluationError as exc:
            return self._unscored(trained, exc, started, note)

    def _decide(self, trained: ModelTrained, started: float, note: str = "",
                scored: bool = False) -> Event:
        """Gate the candidate against the champion; promote it if every rule passes. Not
        ``scored`` yet and no champion at all: the model is served first and scored after
        (nothing to compare with: every second counts)."""
        figures: Figures | None = None
        verdict: Verdict | None = None
        with self._lock:  # one decision at a time in this process; CAS guards the rest
            for _attempt in range(5):
                champion = self._store.get()
                if champion is None and not scored:
                    first = self._serve_first(trained, note)
                    if first is not None:
                        decision = first
                        break
                    continue  # another selector installed a champion meanwhile
                pinned = pinned_for(trained)
                figures = measure(self._evaluator, trained, champion, pinned)
                verdict = gate(self._policy, figures)
                if not verdict.promote:
                    decision = rejected(trained, champion, note + verdict.reason, figures,
                                        verdict.rules)
                    self._judgements.remember(trained, champion, _digest(pinned), decision)
                    log.info("%s/%s rejected: %s", trained.run_id, trained.model_type,
                             verdict.reason)
                    break
                outcome = self._promote(trained, champion, figures, verdict, note)
                if outcome is None:
                    log.info("champion changed while deciding; judging %s again",
                             trained.model_type)
                    continue
                decision, committed = outcome
                if committed:
                    return self._record(decision, started, commit=True)  # the commit
                break
            else:
                decision = rejected(trained, self._store.get(),
                                    f"{note}champion kept changing; gave up after 5 attempts",
                                    figures, verdict.rules if verdict else ())
        return self._record(decision, started)

    def _promote(self, trained: ModelTrained, champion: Champion | None, figures: Figures,
                 verdict: Verdict, note: str) -> tuple[Event, bool] | None:
        """Stage, record the intent, compare-and-set, publish. Returns the decision and whether
        it commits the promotion (False: publishing failed, the champion was kept), or None
        when the champion changed meanwhile (nothing changed; judge again)."""
        staged = self._backend.stage(trained.model_uri, self._backend.next_version())
        new = Champion(version=staged.version, model_uri=staged.location,
                       model_type=trained.model_type, accuracy=figures.new.candidate.accuracy,
                       dataset_digest=trained.dataset_digest, dataset_uri=trained.dataset_uri,
                       run_id=trained.run_id,
                       generation=(champion.generation if champion else 0) + 1)
        decision = promoted(trained, champion, note + verdict.reason, staged.version, figures,
                            verdict.rules)
        installed = self._install(staged, new, champion, decision)
        if installed is False:
            return None
        if isinstance(installed, Exception):
            return rejected(trained, champion, f"{note}promotion failed, champion kept: "
                            f"{installed}", figures, verdict.rules), False
        return decision, True

    def _install(self, staged: Staged, new: Champion, previous: Champion | None,
                 decision: Event) -> bool | Exception:
        """Intent, compare-and-set, publish: True once published (the caller ends it), False
        when the champion changed (staged model discarded), or what publishing raised."""
        self._store.begin(promotion_intent(staged, new, previous, decision))  # then the CAS
        if not self._store.replace(previous.generation if previous else 0, new):
            self._store.end()
            self._backend.discard(staged)
            return False
        try:
            self._backend.publish(staged)
        except Exception as exc:
            self._revert(new, previous)
            self._store.end()
            return exc
        return True

    def _serve_first(self, trained: ModelTrained, note: str) -> Event | None:
        staged = self._backend.stage(trained.model_uri, self._backend.next_version())
        new = Champion(version=staged.version, model_uri=staged.location,
                       model_type=trained.model_type, accuracy=None,
                       dataset_digest=trained.dataset_digest, dataset_uri=trained.dataset_uri,
                       run_id=trained.run_id, generation=1)
        installed = self._install(staged, new, None, promoted(
            trained, None, f"{note}first model: served at once, no champion to compare with; "
            "the selector stopped before scoring it", staged.version))
        if installed is False:
            return None
        if isinstance(installed, Exception):
            figures = measure(self._evaluator, trained, None, pinned_for(trained))
            return rejected(trained, None, f"{note}promotion failed, no champion: {installed}",
                            figures, gate(self._policy, figures).rules)
        self._store.end()  # published: the promotion is done; its decision follows the score
        try:  # scored while the server loads it
            figures = measure(self._evaluator, trained, None, pinned_for(trained))
        except Exception:
            self._revert(new, None)
            raise
        self._store.set_accuracy(new.generation, figures.new.candidate.accuracy)
        return promoted(trained, None,
                        f"{note}first model: served at once, no champion to compare with; "
                        f"accuracy {figures.new.candidate.accuracy:.4f}", staged.version,
                        figures, gate(self._policy, figures).rules)

    # after a crash ---------------------------------------------------------------------------
    def reconcile(self) -> str | None:
        """Finish or undo a promotion a previous selector left between its intent and its
        commit (SIGKILL mid-copy, mid-canary); returns what was done, or None if nothing was
        under way. Never committed: the staged model is discarded. Committed to the champion
        record but cut short while publishing: the backend finishes it if the model is in
        place (a rename done, an InferenceService fully on it), else puts the previous model
        back (a canary left at N %) and the champion record follows."""
        with self._lock:
            intent = self._store.promotion()
            if intent is None:
                return None
            if intent.get("kind") == ROLLBACK:
                done, decision = finish_rollback(self._store, self._backend, intent)
                log.warning("a rollback was cut short by a stopped selector: %s", done)
                if decision is not None:
                    self._emit(decision)
                return done
            staged = Staged(**intent["staged"])  # type: ignore[arg-type]
            new = Champion(**intent["new"])  # type: ignore[arg-type]
            previous = Champion(**intent["previous"]) if intent["previous"] else None  # type: ignore[arg-type]
            current = self._store.get()
            if current is None or (current.generation, current.version) != (new.generation, new.version):
                self._backend.discard(staged)
                self._store.end()
                done = f"version {new.version} was staged but never made champion: discarded"
            elif self._backend.resume(staged, previous.model_uri if previous else None):
                self._record(recorded(intent["decision"]), time.perf_counter(), commit=True)
                done = f"version {new.version}'s promotion was finished"
            else:
                self._revert(new, previous)
                self._store.end()
                done = (f"version {new.version}'s promotion was undone; "
                        + (f"version {previous.version} serves again" if previous else "no champion"))
        log.warning("a promotion was cut short by a stopped selector: %s", done)
        return done

    def _record(self, decision: Event, started: float, refused_from: str | None = None,
                commit: bool = False) -> Event:
        """Audit the decision and record it as its candidate's (one transaction), then emit it:
        a selector that dies in between emits the recorded decision again on redelivery."""
        data = decision.data
        assert isinstance(data, (ModelPromoted, ModelRejected))
        self._store.audit({"type": "refused" if refused_from else decision.type.short,
                           "seconds": round(time.perf_counter() - started, 3),
                           **({"sender": refused_from} if refused_from else {}),
                           **data.model_dump()},
                          candidate=None if refused_from else candidate_id(data),
                          event={"type": decision.type.value, "id": decision.id,
                                 "data": data.model_dump(mode="json")}, commit=commit)
        self._emit(decision)
        return decision

    def _revert(self, new: Champion, previous: Champion | None) -> None:
        """Undo a champion record whose model could not be published (e.g. a canary rolled
        back), unless someone else has replaced it meanwhile."""
        if previous is None:
            self._store.clear(new.generation)
            return
        before, length = self._store.previous()
        restored = replace(previous, generation=new.generation + 1)
        if before is None or not self._store.restore(new.generation, length, restored):
            log.error("could not put champion %d back after a failed promotion", previous.version)

    def rollback(self, reason: str = "rolled back by hand", version: int | None = None) -> Event:
        """Serve the previous champion again (``services.selector.rollback``), then emit the
        decision. ``version``: only if that version is still the champion (the guard's)."""
        decision = roll_back(self._store, self._backend, self._lock, reason, version)
        self._emit(decision)
        return decision


def _digest(pinned: Pinned | None) -> str | None:
    return pinned.digest if pinned else None
