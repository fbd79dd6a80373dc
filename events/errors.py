"""Errors of the CloudEvents contract."""

from __future__ import annotations

from core.errors import RetrainError


class EventError(RetrainError):
    """Base of every event-contract failure."""


class MalformedEventError(EventError):
    """The request does not carry a valid CloudEvent; ``problems`` lists every one found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


class UnknownEventTypeError(EventError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r} (expected one of dev.retrain.*)")
        self.event_type = event_type


class InvalidPayloadError(EventError):
    def __init__(self, event_type: str, problems: list[str]) -> None:
        super().__init__(f"{event_type}: invalid data: " + "; ".join(problems))
        self.event_type = event_type
        self.problems = tuple(problems)


class SinkUnavailableError(EventError):
    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot deliver event to {target}: {reason}")
        self.target = target


class SinkFailedError(SinkUnavailableError):
    """The sink answered, with a server error other than 502, 503, 504 or 429: it is up and fails on
    this event. An outbox retries it a bounded number of times, then dead-letters it."""


class SinkRejectedError(SinkUnavailableError):
    """The sink answered and refused the event (a 4xx other than 429): retrying cannot help."""


class EventRefusedError(EventError):
    """A well-formed event its receiver will not take (a stranger's model, say): answered 403
    with the reason; sending it again will not help."""
