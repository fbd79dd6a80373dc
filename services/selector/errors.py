from __future__ import annotations

from core.errors import RetrainError


class SelectorError(RetrainError):
    """Base of every selection and promotion failure."""


class EvaluationError(SelectorError):
    pass


class NothingToRollBackError(SelectorError):
    pass


class LiveMetricsError(SelectorError):
    """The model server's metrics could not be read (unreachable, or not Prometheus text)."""
