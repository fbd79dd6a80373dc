"""The selector as a service: ``POST /events`` receives ``model.trained`` CloudEvents (from a
TFJob's chief, or any HTTP sender) and a worker thread judges each in arrival order.

What ``retrain select serve`` runs in its Deployment; the local stack wires the same
``Selector`` into its own trigger instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from events import Event, EventType
from events.dedup import Deduplicator
from events.receiver import create_receiver
from services.selector.service import Selector

log = logging.getLogger(__name__)


def create_app(selector: Selector, dedup: Deduplicator, api_keys: tuple[str, ...] = ()) -> Any:
    """A CloudEvents endpoint feeding ``selector``; other event types are acknowledged and
    ignored (logged), so one Argo Events trigger can fan everything out."""
    pending: queue.Queue[Event] = queue.Queue()
    started = threading.Lock()
    workers: list[threading.Thread] = []

    def work() -> None:
        while True:
            event = pending.get()
            try:
                selector.handle(event)
            except Exception:  # one bad candidate must not stop the selector
                log.exception("selection of %s failed", event.id)
            finally:
                pending.task_done()

    def dispatch(event: Event) -> None:
        if event.type is not EventType.MODEL_TRAINED:
            log.info("selector ignores %s (id %s)", event.type.value, event.id)
            return
        with started:  # one judge, started with the first candidate
            if not workers:
                workers.append(threading.Thread(target=work, name="selector", daemon=True))
                workers[0].start()
        pending.put(event)

    app = create_receiver(dedup, dispatch, api_keys, title="retrain selector")
    app.state.pending = pending
    return app
