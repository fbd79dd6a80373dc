"""Serving errors, and the one table that maps them to HTTP status codes."""

from __future__ import annotations

from core.errors import RetrainError


class ServingError(RetrainError):
    status = 500
    headers: dict[str, str] = {}


class BadRequestError(ServingError):
    status = 400


class UnauthorizedError(ServingError):
    status = 401


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
