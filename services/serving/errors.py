"""Serving errors, and the one table that maps them to HTTP status codes."""

from __future__ import annotations

from retrain.errors import RetrainError


class ServingError(RetrainError):
    status = 500


class BadRequestError(ServingError):
    status = 400


class ModelNotFoundError(ServingError):
    status = 404


class PayloadTooLargeError(ServingError):
    status = 413


class ModelNotReadyError(ServingError):
    status = 503
