"""An event as retrain handles it: CloudEvents attributes plus a validated payload."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from events.errors import InvalidPayloadError
from events.payloads import PAYLOADS, Payload
from events.types import EventType


@dataclass(frozen=True)
class Event:
    type: EventType
    source: str
    data: Payload
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    subject: str | None = None
    # CloudEvents extension attributes (lower-case alphanumeric names), such as ``replayof``:
    # the id of the event a replay sends again
    extensions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies an event for duplicate detection."""
        return (self.source, self.id)


def make_event(
    event_type: EventType | str,
    data: Payload | dict[str, Any],
    *,
    source: str,
    id: str | None = None,
    subject: str | None = None,
    extensions: dict[str, str] | None = None,
) -> Event:
    """Build an event, validating ``data`` against the payload model of its type."""
    etype = event_type if isinstance(event_type, EventType) else EventType.parse(event_type)
    payload = parse_payload(etype, data)
    kwargs: dict[str, Any] = {"subject": subject, "extensions": dict(extensions or {})}
    if id is not None:
        kwargs["id"] = id
    return Event(type=etype, source=source, data=payload, **kwargs)


def parse_payload(etype: EventType, data: Payload | dict[str, Any] | None) -> Payload:
    model = PAYLOADS[etype]
    if isinstance(data, model):
        return data
    if isinstance(data, Payload):
        data = data.model_dump()
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}" for err in exc.errors()
        ]
        raise InvalidPayloadError(etype.value, problems) from None
