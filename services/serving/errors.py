"""Serving errors, each carrying its HTTP status (and headers): the one table every door
answers them from (the inference routes, FastAPI's handler, gRPC's statuses)."""

from __future__ import annotations

from core.auth import KeyRefusedError
from core.errors import RetrainError


class ServingError(RetrainError):
    status = 500
    headers: dict[str, str] = {}
    version: int | None = None  # the model version that answered, when one did


class BadRequestError(ServingError):
    status = 400


class RateLimitedError(ServingError):
    status = 429

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": retry_after}


class OverloadedError(ServingError):
    """Too much work already waits for the model: come back shortly."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": "1"}


class ModelNotFoundError(ServingError):
    status = 404


class PayloadTooLargeError(ServingError):
    status = 413


class ModelNotReadyError(ServingError):
    status = 503


class ModelFailedError(ServingError):
    """The model answered something that is not a probability (NaN, infinity): the server's
    fault, not the client's, whatever the answer's encoding (500; INTERNAL over gRPC)."""

    status = 500

    def __init__(self, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


class NotFiniteError(ModelFailedError):
    """The model's answer holds NaN or infinity (checked once per model call)."""


class StatisticsOffError(ServingError):
    """The statistics extension asked of a server keeping no per-version statistics."""

    status = 501


# what the server answers with the error's own status and headers: its own errors, and the
# API-key refusals of core.auth
ANSWERED: tuple[type[ServingError], type[KeyRefusedError]] = (ServingError, KeyRefusedError)
