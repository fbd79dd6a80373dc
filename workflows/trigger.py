"""The local trigger: what an Argo Events Sensor does on a cluster.

``POST /events`` (the CloudEvents receiver) takes what the watcher, ``retrain publish``, the
runner and the trainers send; ``Trigger.dispatch`` routes each new event: a run request
(``dataset.updated``, ``training.requested``) is queued for the runner, a ``model.trained``
goes to the selector, and everything is written to the timeline. Given as
``FromSender(trigger.dispatch)``, it is told who sent each event, as the receiver
authenticated it: a ``training.requested`` approving a blocked run names that sender as
its approver (the name its body gives is kept as a note, not as who approved).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from fastapi import FastAPI

from core import timeline
from events import Event, EventType
from events.dedup import Deduplicator
from events.payloads import RunParameters
from events.receiver import Dispatch, create_receiver
from events.types import RUN_REQUESTS
from workflows.queue import RunQueue
from workflows.runner import RunRequest

log = logging.getLogger(__name__)


def create_app(dedup: Deduplicator, dispatch: Dispatch,
               api_keys: tuple[str, ...] = (),
               health: Callable[[], str | None] | None = None,
               client: redis.Redis | None = None) -> FastAPI:
    """The trigger's HTTP endpoint: new events go to ``dispatch``, duplicates are dropped
    (and, given the ``client``, put on the timeline as such, for the dashboard)."""

    def duplicate(event: Event) -> None:
        timeline.record(client, "event", event.type.short, **describe(event), duplicate=True)  # type: ignore[arg-type]

    return create_receiver(dedup, dispatch, api_keys, title="retrain trigger", health=health,
                           duplicate=duplicate if client is not None else None)


def describe(event: Event) -> dict[str, Any]:
    """The few fields of an event worth a timeline line."""
    data = event.data.model_dump()
    keep = ("run_id", "model_type", "trigger", "digest", "reason", "val_accuracy",
            "candidate_accuracy", "champion_accuracy", "version", "records", "seconds")
    return {"id": event.id, "source": event.source,
            **{k: data[k] for k in keep if data.get(k) is not None}}


class Trigger:
    """Routes events as the cluster's Sensors do: run requests to the run queue in Redis,
    trained models and failed trainings to ``judge``."""

    def __init__(self, client: redis.Redis, judge: Callable[[Event], None],
                 default_parameters: RunParameters | None = None,
                 observe: Callable[[Event], None] | None = None) -> None:
        self._r = client
        self._queue = RunQueue(client)
        self._judge = judge
        self._defaults = default_parameters
        self._observe = observe  # told of every event accepted (retrain up's narration)

    def dispatch(self, event: Event, sender: str | None = None) -> None:
        """Route ``event``; ``sender``: who sent it, as the receiver authenticated it."""
        timeline.record(self._r, "event", event.type.short, **describe(event),
                        **({"sender": sender} if sender else {}))
        if self._observe is not None:
            try:  # telling a person must never cost the event
                self._observe(event)
            except Exception:
                log.debug("could not tell of %s", event.id, exc_info=True)
        if event.type in RUN_REQUESTS:
            self._queue.put(RunRequest.from_event(event, self._defaults, sender))
        elif event.type in (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED):
            self._judge(event)  # a failure tells the selector one of the run's trainings ended
