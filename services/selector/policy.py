"""The champion policy as code: pure decisions from scores on the same test split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChampionPolicy:
    """``min_improvement``: absolute accuracy a candidate must add to replace the champion (a
    tie always keeps the champion). ``quorum`` / ``deadline_seconds``: when either is set, the
    candidates of one run form a round that closes after ``quorum`` models or
    ``deadline_seconds`` after its first model, whichever comes first; only the round's best
    is then judged against the champion. Unset (the default), each model is judged as it
    arrives. A model arriving after its round closed is judged on its own."""

    min_improvement: float = 0.0
    quorum: int | None = None
    deadline_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_improvement < 1:
            raise ValueError(f"min_improvement must be within [0, 1), got {self.min_improvement}")
        if self.quorum is not None and self.quorum < 1:
            raise ValueError(f"quorum must be at least 1, got {self.quorum}")
        if self.deadline_seconds is not None and self.deadline_seconds <= 0:
            raise ValueError(f"deadline must be positive, got {self.deadline_seconds}")

    @property
    def rounds(self) -> bool:
        return self.quorum is not None or self.deadline_seconds is not None


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Entry:
    """A scored candidate of a round."""

    accuracy: float
    val_loss: float
    arrival: float  # when it joined the round (the earlier wins a full tie)


def rank_key(entry: Entry) -> tuple[float, float, float]:
    """Best first: higher test accuracy; on a tie, lower validation loss; then the earlier."""
    return (-entry.accuracy, entry.val_loss, entry.arrival)


def judge(policy: ChampionPolicy, candidate: float, champion: float | None) -> Verdict:
    if champion is None:
        return Verdict(True, f"first model: accuracy {candidate:.4f}, no champion yet")
    margin = candidate - champion
    if margin > policy.min_improvement or (policy.min_improvement == 0 and margin > 0):
        return Verdict(True, f"better: {candidate:.4f} vs champion {champion:.4f} (+{margin:.4f})")
    if margin > 0:
        return Verdict(
            False,
            f"not enough better: {candidate:.4f} vs {champion:.4f} "
            f"(+{margin:.4f} < required {policy.min_improvement:.4f})",
        )
    return Verdict(False, f"not better: {candidate:.4f} vs champion {champion:.4f} ({margin:+.4f})")
