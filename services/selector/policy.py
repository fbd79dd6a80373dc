"""The champion policy as code: a pure decision from two scores on the same test split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChampionPolicy:
    min_improvement: float = 0.0  # absolute accuracy a candidate must add to replace the champion


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


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
