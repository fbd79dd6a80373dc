"""``retrain run``: one workflow run in this process, with the selector judging each model
as its training finishes (the same Selector the stack runs, called directly)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from core import timeline
from core.redis_store import open_redis
from core.settings import MODEL_NAME, Settings
from events import Event, EventType
from events.payloads import RunParameters
from workflows.trigger import describe


def run_once(settings: Settings, data_uri: str, params: RunParameters,
             console: Console) -> dict[str, Any]:
    from workflows.runner import LocalRunner, RunRequest

    with open_redis(settings.redis_url, settings.home) as handle:
        client = handle.client
        selector = None
        decisions: list[dict[str, Any]] = []

        def emit(event: Event) -> None:
            nonlocal selector
            timeline.record(client, "event", event.type.short, **describe(event))
            if event.type in (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED):
                if selector is None:
                    selector = _selector(settings, client, emit)
                selector.handle(event)
            elif event.type in (EventType.MODEL_PROMOTED, EventType.MODEL_REJECTED):
                decisions.append({"decision": event.type.short, **event.data.model_dump()})

        runner = LocalRunner(settings, client, handle.url, emit, console)
        summary = runner.run(RunRequest(data_uri=data_uri, parameters=params, trigger="cli"))
        if selector is not None:  # every training has ended: a round still open closes now
            selector.close_round(summary["run_id"], "the end of the run")
        summary["decisions"] = decisions
        return summary


def _selector(settings: Settings, client: Any, emit: Any) -> Any:
    from services.selector.backends import LocalBackend
    from services.selector.main import build_selector

    return build_selector(settings, client, emit, LocalBackend(settings.model_repo, MODEL_NAME))
