"""The CloudEvents contract of retrain: types, payloads, HTTP codec, sinks, dedup."""

from events.envelope import Event, make_event
from events.types import EventType

__all__ = ["Event", "EventType", "make_event"]
