"""Rolling back: the previous champion serves again, as a new version (versions only grow,
so every server and KServe see an ordinary promotion). One path for a person's rollback
(``retrain select rollback``, the dashboard's button) and the live guard's."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from events import Event, EventType, make_event
from events.payloads import ModelPromoted
from services.selector.backends import PromotionBackend
from services.selector.champion import ChampionStore
from services.selector.decisions import SOURCE
from services.selector.errors import NothingToRollBackError, SelectorError

log = logging.getLogger(__name__)


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
        if not store.restore(current.generation, length, restored):
            backend.discard(staged)
            raise SelectorError("the champion changed during the rollback; nothing was changed")
        backend.publish(staged, at_once=True)  # a way back is never canaried
        text = (f"rollback: {reason}; version {current.version} ({current.model_type}, "
                f"{score(current.accuracy)}) replaced by the previous champion "
                f"{previous.model_type} {score(previous.accuracy)} (was version {previous.version})")
        data = ModelPromoted(
            run_id=previous.run_id, model_type=previous.model_type, model_uri=previous.model_uri,
            candidate_accuracy=previous.accuracy, champion_accuracy=current.accuracy,
            champion_version=current.version, reason=text, version=staged.version)
        decision = make_event(EventType.MODEL_PROMOTED, data, source=SOURCE,
                              id=f"rollback/{current.generation}")
        store.audit({"type": "rollback", "seconds": 0.0, **data.model_dump()})
        log.warning("%s", text)
    return decision


def score(accuracy: float | None) -> str:
    return "unscored" if accuracy is None else f"{accuracy:.4f}"
