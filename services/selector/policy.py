"""The champion policy as code: pure decisions from plain figures.

The promotion gate has three rules, each reported with its figures whether it passed or not:

- ``better``: higher accuracy than the champion on the candidate's own (new) test split, by
  more than ``min_improvement`` (a tie keeps the champion). ``value`` is the gain.
- ``pinned_tolerance``: not worse than the champion on the pinned evaluation set by more than
  ``pinned_tolerance``, so a push that rewrites the test split cannot make a worse model look
  better. ``value`` is the loss (negative: a gain).
- ``class_drop``: no class loses more than ``max_class_drop`` of its F1 (its recall where
  the models' predictions were not counted), or more than chance allows on that class's
  images (``CLASS_DROP_Z`` standard errors), on either split. ``value`` is the largest loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dataset.layout import CLASS_NAMES
from events.payloads import GateRule, SplitScores

EPSILON = 1e-9  # accuracies are ratios of counts: 1/200 lost is within a 0.005 tolerance
# a class may lose max(RETRAIN_PROMOTION_MAX_CLASS_DROP, this many standard errors of the
# difference of two accuracies measured on its test images): chance alone does not refuse
CLASS_DROP_Z = 2.0


@dataclass(frozen=True)
class ChampionPolicy:
    """``min_improvement``: absolute accuracy a candidate must add to replace the champion (a
    tie always keeps the champion). ``pinned_tolerance``: accuracy a candidate may lose on the
    pinned evaluation set. ``max_class_drop``: accuracy any one class may lose, on either
    split. ``quorum`` / ``deadline_seconds``: when either is set, the candidates of one run
    form a round that closes after ``quorum`` models or ``deadline_seconds`` after its first
    model, whichever comes first; only the round's best is then judged against the champion.
    Unset (the default), each model is judged as it arrives. A model arriving after its round
    closed is judged on its own."""

    min_improvement: float = 0.0
    quorum: int | None = None
    deadline_seconds: float | None = None
    pinned_tolerance: float = 0.005
    max_class_drop: float = 0.03

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.min_improvement < 1:
            problems.append(f"min_improvement must be within [0, 1), got {self.min_improvement}")
        if self.quorum is not None and self.quorum < 1:
            problems.append(f"quorum must be at least 1, got {self.quorum}")
        if self.deadline_seconds is not None and self.deadline_seconds <= 0:
            problems.append(f"deadline must be positive, got {self.deadline_seconds}")
        for name in ("pinned_tolerance", "max_class_drop"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def rounds(self) -> bool:
        return self.quorum is not None or self.deadline_seconds is not None


@dataclass(frozen=True)
class Score:
    """A model on one test split: accuracy, and accuracy of each true class (0-9)."""

    accuracy: float
    per_class: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()  # test images of each class (how much a class's figure is worth)
    predicted: tuple[int, ...] = ()  # images the model put in each class (its precision)

    def f1(self) -> tuple[float, ...]:
        """Each class's F1 (recall and precision together), or () without the counts: a
        model that calls every image a dress has all the dresses' recall and little of
        their F1."""
        if not (self.counts and self.predicted and self.per_class):
            return ()
        return tuple(2 * r * n / (n + m) if n + m else 0.0
                     for r, n, m in zip(self.per_class, self.counts, self.predicted, strict=True))


@dataclass(frozen=True)
class Split:
    """The candidate's and the champion's scores on one evaluation split."""

    name: str  # "new" (the candidate's own test split) or "pinned"
    digest: str | None  # the content digest of the dataset whose test split it is
    candidate: Score
    champion: Score | None  # None: no champion yet


@dataclass(frozen=True)
class Figures:
    """Everything the gate looks at. ``pinned`` None: no pinned evaluation set exists."""

    new: Split
    pinned: Split | None = None
    pinned_is_new: bool = False  # the candidate's test split is the pinned set (scored once)

    def scores(self) -> tuple[SplitScores, ...]:
        """The figures as a decision carries them."""
        return tuple(SplitScores(split=s.name, dataset_digest=s.digest,  # type: ignore[arg-type]
                                 candidate=s.candidate.accuracy,
                                 champion=s.champion.accuracy if s.champion else None,
                                 candidate_per_class=s.candidate.per_class,
                                 champion_per_class=s.champion.per_class if s.champion else ())
                     for s in (self.new, self.pinned) if s is not None)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    rules: tuple[GateRule, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A scored candidate of a round."""

    accuracy: float
    val_loss: float
    arrival: float  # when it joined the round (the earlier wins a full tie)


def rank_key(entry: Entry) -> tuple[float, float, float]:
    """Best first: higher test accuracy; on a tie, lower validation loss; then the earlier."""
    return (-entry.accuracy, entry.val_loss, entry.arrival)


def gate(policy: ChampionPolicy, figures: Figures) -> Verdict:
    """The promotion gate: promote only when every rule passes. Every rule is returned with
    its figures; a refusal's reason names each failed rule with its own."""
    candidate = figures.new.candidate.accuracy
    if figures.new.champion is None:
        first = f"first model: accuracy {candidate:.4f}, no champion yet"
        return Verdict(True, first, (
            GateRule(name="better", passed=True, threshold=policy.min_improvement, detail=first),
            GateRule(name="pinned_tolerance", passed=True, threshold=policy.pinned_tolerance,
                     detail="no champion to compare with"),
            GateRule(name="class_drop", passed=True, threshold=policy.max_class_drop,
                     detail="no champion to compare with")))
    rules = (_better(policy, candidate, figures.new.champion.accuracy),
             _pinned(policy, figures.pinned),
             _class_drop(policy, figures))
    failed = [rule for rule in rules if not rule.passed]
    if not failed:
        return Verdict(True, "; ".join(rule.detail for rule in rules), rules)
    return Verdict(False, f"refused by {', '.join(rule.name for rule in failed)}: "
                          + "; ".join(rule.detail for rule in failed), rules)


def _better(policy: ChampionPolicy, candidate: float, champion: float) -> GateRule:
    margin = candidate - champion
    if margin > policy.min_improvement or (policy.min_improvement == 0 and margin > 0):
        detail, passed = f"better: {candidate:.4f} vs champion {champion:.4f} (+{margin:.4f})", True
    elif margin > 0:
        detail, passed = (f"not enough better: {candidate:.4f} vs {champion:.4f} "
                          f"(+{margin:.4f} < required {policy.min_improvement:.4f})"), False
    else:
        detail, passed = f"not better: {candidate:.4f} vs champion {champion:.4f} ({margin:+.4f})", False
    return GateRule(name="better", passed=passed, value=margin, threshold=policy.min_improvement,
                    detail=detail)


def _pinned(policy: ChampionPolicy, pinned: Split | None) -> GateRule:
    tolerance = policy.pinned_tolerance
    if pinned is None or pinned.champion is None:
        return GateRule(name="pinned_tolerance", passed=True, threshold=tolerance,
                        detail="no pinned evaluation set")
    candidate, champion = pinned.candidate.accuracy, pinned.champion.accuracy
    loss = champion - candidate
    passed = loss <= tolerance + EPSILON
    figures = (f"pinned set {(pinned.digest or '?')[:12]}: {candidate:.4f} vs champion "
               f"{champion:.4f} ({candidate - champion:+.4f}, tolerance {tolerance:.4f})")
    return GateRule(name="pinned_tolerance", passed=passed, value=loss, threshold=tolerance,
                    detail=figures if passed else f"worse on the {figures}")


def _class_drop(policy: ChampionPolicy, figures: Figures) -> GateRule:
    limit = policy.max_class_drop
    splits = [figures.new] if figures.pinned_is_new or figures.pinned is None else [
        figures.new, figures.pinned]
    drops = []  # (loss, split, class, candidate, champion)
    for split in splits:
        if split.champion is None or not split.candidate.per_class:
            continue
        if len(split.candidate.per_class) != len(split.champion.per_class):
            continue
        counts = split.candidate.counts or split.champion.counts
        # per class F1 where both models' predictions were counted, else recall
        mine_f1, theirs_f1 = split.candidate.f1(), split.champion.f1()
        pair = ((mine_f1, theirs_f1) if mine_f1 and theirs_f1 else
                (split.candidate.per_class, split.champion.per_class))
        for label, (mine, theirs) in enumerate(zip(*pair, strict=True)):
            allowed = max(limit, _noise(theirs, counts[label] if label < len(counts) else 0))
            drops.append((theirs - mine, split.name, label, mine, theirs, allowed,
                          " F1" if pair[0] is mine_f1 else ""))
    if not drops:
        return GateRule(name="class_drop", passed=True, threshold=limit,
                        detail="no per-class scores to compare")
    over = sorted((d for d in drops if d[0] > d[5] + EPSILON), key=lambda d: d[5] - d[0])
    worst = over[0] if over else max(drops, key=lambda d: d[0] - d[5])
    if not over:
        return GateRule(name="class_drop", passed=True, value=worst[0], threshold=worst[5],
                        detail=f"no class lost more than it may (the most: {_class(worst)})")
    return GateRule(name="class_drop", passed=False, value=worst[0], threshold=worst[5],
                    detail=f"{len(over)} class(es) lost more than they may: "
                           + "; ".join(_class(d) for d in over))


def _noise(accuracy: float, images: int) -> float:
    """What two equally good models' accuracies on one class of ``images`` test images may
    differ by, by chance: ``CLASS_DROP_Z`` standard errors of the difference (a class of
    1,000 images at 80 %: 0.036; of 20 images: 0.25). 0 when the count is unknown."""
    if images <= 0:
        return 0.0
    p = min(max(accuracy, 0.05), 0.95)
    return CLASS_DROP_Z * math.sqrt(2 * p * (1 - p) / images)


def _class(drop: tuple[float, str, int, float, float, float, str]) -> str:
    _loss, split, label, mine, theirs, allowed, measure = drop
    name = CLASS_NAMES[label] if label < len(CLASS_NAMES) else str(label)
    return (f"class {label} {name} on the {split} split{measure} {mine:.4f} vs champion "
            f"{theirs:.4f} ({mine - theirs:+.4f}, may lose {allowed:.4f})")
