"""The figures the promotion gate looks at: the candidate and the champion scored on the
candidate's own test split and on the pinned evaluation set, overall and per class.

Scores come through ``services.selector.scores.Scores``, so a model is loaded only for a pair
never scored. When the candidate's test split is the pinned set, it is scored once.
"""

from __future__ import annotations

from pathlib import Path

from dataset import pinned as pinning
from dataset.errors import DatasetError
from dataset.pinned import Pinned
from dataset.store import verify
from events.payloads import ModelTrained
from services.selector.champion import Champion
from services.selector.errors import EvaluationError
from services.selector.policy import Figures, Split
from services.selector.scores import Scoring


def pinned_for(trained: ModelTrained) -> Pinned | None:
    """The pinned evaluation set of the store the candidate's dataset is in, or None."""
    try:
        return pinning.current(pinning.store_of(trained.dataset_uri))
    except DatasetError as exc:
        raise EvaluationError(f"the pinned evaluation set cannot be read: {exc}") from None


def _is_pinned(trained: ModelTrained, pinned: Pinned) -> bool:
    return (trained.dataset_digest == pinned.digest
            or Path(trained.dataset_uri).resolve() == Path(pinned.dataset_uri).resolve())


def measure(scores: Scoring, trained: ModelTrained, champion: Champion | None,
            pinned: Pinned | None) -> Figures:
    """Score the candidate and the champion (if any) on the new split and the pinned set."""
    new = Split("new", trained.dataset_digest, scores.score(trained.model_uri, trained.dataset_uri),
                scores.score(champion.model_uri, trained.dataset_uri) if champion else None)
    if pinned is None:
        return Figures(new)
    if _is_pinned(trained, pinned):
        return Figures(new, Split("pinned", pinned.digest, new.candidate, new.champion),
                       pinned_is_new=True)
    damage = verify(pinned.dataset_uri)
    if damage:
        raise EvaluationError(f"the pinned evaluation set {pinned.key[:12]} cannot be trusted: "
                              f"{damage}; choose one with retrain golden set --data DIR")
    return Figures(new, Split(
        "pinned", pinned.digest, scores.score(trained.model_uri, pinned.dataset_uri),
        scores.score(champion.model_uri, pinned.dataset_uri) if champion else None))
