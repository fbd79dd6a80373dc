"""Errors of the retrain workflow: its steps and runs (dataset problems are ``DatasetError``)."""

from __future__ import annotations

from core.errors import RetrainError


class WorkflowError(RetrainError):
    """Base of every workflow failure."""
