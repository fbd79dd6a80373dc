"""Publishing a CloudEvent by hand: what ``retrain publish`` and the demo's stage 2 do."""

from __future__ import annotations

import json
from typing import Any

from core.errors import ConfigurationError
from core.settings import Settings
from events import Event, make_event
from events.sinks import HttpSink


def publish_event(settings: Settings, event_type: str, data: str, *, sink: str | None = None,
                  source: str = "retrain/cli", event_id: str | None = None,
                  structured: bool = False) -> tuple[Event, str, bool]:
    """Send one event whose data is the JSON text ``data``; returns it, where it went, and
    whether the receiver dropped it as a duplicate of one it already had."""
    try:
        payload: Any = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--data is not valid JSON: {exc}") from None
    if (isinstance(payload, dict) and "origin" not in payload
            and event_type.removeprefix("dev.retrain.") == "dataset.updated"):
        payload = {**payload, "origin": {"kind": "manual"}}  # the lineage says: by hand
    event = make_event(event_type, payload, source=source, id=event_id)
    target = sink or settings.events_url
    duplicates = HttpSink(target, mode="structured" if structured else "binary",
                          api_key=settings.api_key).deliver(event)
    return event, target, event.id in duplicates
