from __future__ import annotations

from core.errors import RetrainError


class SelectorError(RetrainError):
    """Base of every selection and promotion failure."""


class EvaluationError(SelectorError):
    pass


class NothingToRollBackError(SelectorError):
    pass
