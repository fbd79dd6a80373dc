"""``retrain run``: one workflow run in this process, with the selector judging each model
as its training finishes (the same Selector the stack runs, called directly)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    from workflows.runner import RunRequest

    with open_redis(settings.redis_url, settings.home) as handle:
        with local_runner(settings, handle, console) as (runner, decisions):
            summary = runner.run(RunRequest(data_uri=data_uri, parameters=params, trigger="cli"))
        summary["decisions"] = decisions
        return summary


@contextmanager
def local_runner(settings: Settings, handle: Any, console: Console
                 ) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """A runner whose trainings are judged here as they end, and the decisions it collects;
    a round still open when the caller is done closes then (every training has ended)."""
    from workflows.runner import LocalRunner

    client = handle.client
    selector = None
    decisions: list[dict[str, Any]] = []
    run_ids: list[str] = []

    def emit(event: Event) -> None:
        nonlocal selector
        timeline.record(client, "event", event.type.short, **describe(event))
        if event.type in (EventType.MODEL_TRAINED, EventType.TRAINING_FAILED):
            if selector is None:
                selector = _selector(settings, client, emit)
            run_ids.append(event.data.run_id)  # type: ignore[union-attr]
            selector.handle(event)
        elif event.type in (EventType.MODEL_PROMOTED, EventType.MODEL_REJECTED):
            decisions.append({"decision": event.type.short, **event.data.model_dump()})

    yield LocalRunner(settings, client, handle.url, emit, console), decisions
    if selector is not None:
        for run_id in dict.fromkeys(run_ids):
            selector.close_round(run_id, "the end of the run")


def _selector(settings: Settings, client: Any, emit: Any) -> Any:
    from services.selector.backends import LocalBackend
    from services.selector.main import build_selector
    from workflows import record

    # a served version's run is kept for good: its lineage reads it
    return build_selector(settings, client, emit, LocalBackend(settings.model_repo, MODEL_NAME),
                          keep=record.keep)
