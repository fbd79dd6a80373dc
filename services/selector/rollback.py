"""Rolling back: the previous champion serves again, as a new version (versions only grow,
so every server and KServe see an ordinary promotion). One path for a person's rollback
(``retrain select rollback``, the dashboard's button) and the live guard's."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, replace
from typing import Any

from events import Event, EventType, make_event
from events.payloads import ModelPromoted
from services.selector.backends import PromotionBackend, Staged
from services.selector.champion import Champion, ChampionStore
from services.selector.decisions import SOURCE, intent, recorded
from services.selector.errors import NothingToRollBackError, SelectorError

log = logging.getLogger(__name__)
ROLLBACK = "rollback"  # the kind of an intent a rollback records (a promotion's has none)


def roll_back(store: ChampionStore, backend: PromotionBackend, lock: threading.Lock,
              reason: str, version: int | None = None) -> Event:
    """Serve the previous champion again and audit it; returns the decision (a
    ``model.promoted``) for the caller to emit. Atomic like a promotion: if the champion
    changes meanwhile, nothing is changed and ``SelectorError`` says so. ``version``: roll
    back only if that version is still the champion."""
    with lock:
        current = store.get()
        previous, length = store.previous()
        if current is None or previous is None:
            raise NothingToRollBackError(
                "there is no previous champion to roll back to"
                + ("" if current else " (no champion at all yet)"))
        if version is not None and current.version != version:
            raise SelectorError(f"version {version} is no longer the champion (version "
                                f"{current.version} is); nothing was changed")
        try:
            staged = backend.stage(previous.model_uri, backend.next_version())
        except FileNotFoundError:
            raise NothingToRollBackError(
                f"the previous champion's model {previous.model_uri} is gone") from None
        restored = replace(previous, version=staged.version, model_uri=staged.location,
                           generation=current.generation + 1)
        text = (f"rollback: {reason}; version {current.version} ({current.model_type}, "
                f"{score(current.accuracy)}) replaced by the previous champion "
                f"{previous.model_type} {score(previous.accuracy)} (was version {previous.version})")
        data = ModelPromoted(
            run_id=previous.run_id, model_type=previous.model_type, model_uri=previous.model_uri,
            candidate_accuracy=previous.accuracy, champion_accuracy=current.accuracy,
            champion_version=current.version, reason=text, version=staged.version)
        decision = make_event(EventType.MODEL_PROMOTED, data, source=SOURCE,
                              id=f"rollback/{current.generation}")
        # the intent first, as a promotion's: a selector that dies before the commit leaves
        # it to the next one (``finish``), never a champion record whose model is not served
        store.begin({**intent(staged, restored, current, decision), "kind": ROLLBACK,
                     "previous_champion": asdict(previous)})
        if not store.restore(current.generation, length, restored):
            store.end()
            backend.discard(staged)
            raise SelectorError("the champion changed during the rollback; nothing was changed")
        try:
            backend.publish(staged, at_once=True)  # a way back is never canaried
        except Exception as exc:  # whatever the backend raised: undone, then told
            backend.discard(staged)
            store.undo_restore(restored.generation, previous,
                               replace(current, generation=restored.generation + 1))
            store.end()
            raise SelectorError(f"the rollback could not be published ({exc}); version "
                                f"{current.version} still serves") from exc
        _commit(store, data)
        log.warning("%s", text)
    return decision


def _commit(store: ChampionStore, data: ModelPromoted) -> None:
    store.audit({"type": "rollback", "seconds": 0.0, **data.model_dump()}, commit=True)


def finish(store: ChampionStore, backend: PromotionBackend,
           pending: dict[str, Any]) -> tuple[str, Event | None]:
    """A rollback a stopped selector left between its intent and its commit: finished if its
    model can still be served (the decision, to emit again), else undone (the version it
    rolled back from serves again, as the server still does). Returns what was done."""
    staged = Staged(**pending["staged"])
    restored, back = Champion(**pending["new"]), Champion(**pending["previous"])
    previous = Champion(**pending["previous_champion"])
    decision = recorded(pending["decision"])
    current = store.get()
    if current is None or (current.generation, current.version) != (restored.generation,
                                                                    restored.version):
        backend.discard(staged)
        store.end()
        return f"the rollback from version {back.version} never changed the champion", None
    if backend.resume(staged, back.model_uri):
        assert isinstance(decision.data, ModelPromoted)
        _commit(store, decision.data)
        return f"the rollback from version {back.version} was finished", decision
    store.undo_restore(restored.generation, previous, replace(back, generation=restored.generation + 1))
    store.end()
    return (f"the rollback from version {back.version} could not be published: version "
            f"{back.version} serves again"), None


def score(accuracy: float | None) -> str:
    return "unscored" if accuracy is None else f"{accuracy:.4f}"
