"""Errors of the retrain workflow: its steps and runs (dataset problems are ``DatasetError``)."""

from __future__ import annotations

from core.errors import RetrainError


class WorkflowError(RetrainError):
    """Base of every workflow failure."""


class ApprovalError(RetrainError):
    """A run that cannot be approved: unknown, not blocked, or its dataset is gone."""

    exit_code = 1
