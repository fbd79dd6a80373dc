"""Errors of the retrain workflow: ingestion, cache and runs."""

from __future__ import annotations

from retrain.errors import RetrainError


class WorkflowError(RetrainError):
    """Base of every workflow failure."""


class DatasetValidationError(WorkflowError):
    """The dataset cannot be ingested; ``problems`` names every file and reason found."""

    def __init__(self, problems: list[str]) -> None:
        joined = "\n  - ".join(problems)
        super().__init__(f"dataset is invalid ({len(problems)} problem(s)):\n  - {joined}")
        self.problems = tuple(problems)


class DatasetNotFoundError(WorkflowError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"dataset not found: {uri} (no such folder)")
        self.uri = uri


class TrainingProcessError(WorkflowError):
    pass
