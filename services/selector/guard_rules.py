"""The guard's rules, pure: a promoted version's live window against the previous version's.

``judge`` returns every rule with its figures (``events.payloads.GateRule``), as the promotion
gate does: ``consecutive_errors`` (the fast rule, read at every poll), ``error_rate`` (the rise
in the share of 5xx answers), ``p99_latency`` (the ratio of the p99s, above a floor) and
``class_distribution`` (the Jensen-Shannon distance between the predicted classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.payloads import GateRule
from services.selector.live import VersionStats

RULES = ("consecutive_errors", "error_rate", "p99_latency", "class_distribution")


@dataclass(frozen=True)
class GuardThresholds:
    max_error_rate_increase: float = 0.01  # a share: 0.01 is one point
    max_p99_ratio: float = 2.0
    p99_floor_seconds: float = 0.02  # a p99 below this is never too slow
    max_class_distance: float = 0.15  # Jensen-Shannon distance, base 2 (0..1)
    consecutive_errors: int = 5
    min_requests: int = 50  # fewer answers: latency and classes are not judged

    @classmethod
    def from_settings(cls, settings: Any) -> GuardThresholds:
        return cls(
            max_error_rate_increase=settings.guard_max_error_rate_increase,
            max_p99_ratio=settings.guard_max_p99_ratio,
            p99_floor_seconds=settings.guard_p99_floor_ms / 1000.0,
            max_class_distance=settings.guard_max_class_distance,
            consecutive_errors=settings.guard_consecutive_errors,
            min_requests=settings.guard_min_requests,
        )


def judge(window: VersionStats, baseline: VersionStats | None,
          t: GuardThresholds) -> tuple[GateRule, ...]:
    """Every rule, passed or not, for ``window`` (the new version's figures since its
    promotion) against ``baseline`` (the previous version's last window; None: none known)."""
    return (streak_rule(window, t), _error_rate(window, baseline, t),
            _p99(window, baseline, t), _classes(window, baseline, t))


def streak_rule(window: VersionStats, t: GuardThresholds) -> GateRule:
    """The fast rule: so many 5xx answers in a row that the window need not end."""
    streak = window.longest_error_streak
    return GateRule(name="consecutive_errors", passed=streak < t.consecutive_errors,
                    value=streak, threshold=float(t.consecutive_errors),
                    detail=f"{streak:.0f} errors in a row (at most {t.consecutive_errors - 1})")


def _error_rate(window: VersionStats, baseline: VersionStats | None,
                t: GuardThresholds) -> GateRule:
    before = baseline.error_rate if baseline is not None else 0.0
    rise = window.error_rate - before
    detail = (f"{window.errors:.0f} errors in {window.requests:.0f} answers "
              f"({window.error_rate:.2%}) against {before:.2%}"
              + ("" if baseline is not None else " (no baseline: 0%)"))
    return GateRule(name="error_rate", passed=rise <= t.max_error_rate_increase, value=rise,
                    threshold=t.max_error_rate_increase, detail=detail)


def _unjudged(name: str, threshold: float, window: VersionStats, baseline: VersionStats | None,
              t: GuardThresholds, counted: str) -> GateRule | None:
    """Latency and classes are judged only on enough answers, against a baseline of enough."""
    if baseline is None:
        return GateRule(name=name, passed=True, threshold=threshold,
                        detail="not judged: no baseline")
    mine = window.requests if counted == "requests" else window.answers
    theirs = baseline.requests if counted == "requests" else baseline.answers
    for whose, n in (("", mine), ("baseline: ", theirs)):
        if n < t.min_requests:
            return GateRule(name=name, passed=True, threshold=threshold,
                            detail=f"not judged: {whose}{n:.0f} answers < {t.min_requests}")
    return None


def _p99(window: VersionStats, baseline: VersionStats | None, t: GuardThresholds) -> GateRule:
    skipped = _unjudged("p99_latency", t.max_p99_ratio, window, baseline, t, "requests")
    if skipped is not None:
        return skipped
    assert baseline is not None
    new, old = window.p99_seconds, baseline.p99_seconds
    if new is None or old is None:
        return GateRule(name="p99_latency", passed=True, threshold=t.max_p99_ratio,
                        detail="not judged: no latencies counted")
    ratio = new / old if old > 0 else math.inf
    passed = ratio <= t.max_p99_ratio or new <= t.p99_floor_seconds
    return GateRule(name="p99_latency", passed=passed, value=round(ratio, 4),
                    threshold=t.max_p99_ratio,
                    detail=f"p99 {new * 1000:g} ms against {old * 1000:g} ms "
                           f"(never too slow below {t.p99_floor_seconds * 1000:g} ms)")


def _classes(window: VersionStats, baseline: VersionStats | None,
             t: GuardThresholds) -> GateRule:
    skipped = _unjudged("class_distribution", t.max_class_distance, window, baseline, t,
                        "answers")
    if skipped is not None:
        return skipped
    assert baseline is not None
    distance = class_distance(window.classes, baseline.classes)
    return GateRule(name="class_distribution", passed=distance <= t.max_class_distance,
                    value=round(distance, 4), threshold=t.max_class_distance,
                    detail=f"Jensen-Shannon distance {distance:.3f} between the predicted "
                           f"classes of {window.answers:.0f} and {baseline.answers:.0f} answers"
                           + _moved(window.classes, baseline.classes))


def _moved(a: Mapping[int, float], b: Mapping[int, float]) -> str:
    """The class whose share moved most, named: what a reader wants to see first."""
    pa, pb = _shares(a), _shares(b)
    keys = {*pa, *pb}
    if not keys:
        return ""
    label = max(keys, key=lambda k: abs(pa.get(k, 0.0) - pb.get(k, 0.0)))
    return f"; class {label}: {pa.get(label, 0.0):.1%} against {pb.get(label, 0.0):.1%}"


def _shares(counts: Mapping[int, float]) -> dict[int, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total > 0 else {}


def class_distance(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """The Jensen-Shannon distance (base 2: 0 alike, 1 disjoint) between two class counts."""
    pa, pb = _shares(a), _shares(b)
    if not pa or not pb:
        return 0.0
    divergence = 0.0
    for k in {*pa, *pb}:
        p, q = pa.get(k, 0.0), pb.get(k, 0.0)
        m = (p + q) / 2
        if p > 0:
            divergence += 0.5 * p * math.log2(p / m)
        if q > 0:
            divergence += 0.5 * q * math.log2(q / m)
    return math.sqrt(max(0.0, divergence))
