"""The guard's rules, pure: a promoted version's live window against the previous version's.

``judge`` returns every rule with its figures (``events.payloads.GateRule``), as the promotion
gate does: ``consecutive_errors`` (the fast rule, read at every poll), ``error_rate`` (the rise
in the share of 5xx answers), ``p99_latency`` (the ratio of the p99s, above a floor) and
``class_distribution`` (the Jensen-Shannon distance between the predicted classes).

A rule judged on samples breaks only on a difference both large (beyond its threshold) and
significant: unlikely by chance at ``SIGNIFICANCE``, so that a few hundred answers of two
identical models never read as a change. Error rates are compared with Fisher's exact test,
predicted classes with a G-test, and a p99 is read only on ``P99_MIN_ANSWERS`` answers or more.
The p-values are in each rule's detail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataset.validation import js_distance
from events.payloads import GateRule
from services.selector.live import VersionStats

RULES = ("consecutive_errors", "error_rate", "p99_latency", "class_distribution")
SIGNIFICANCE = 0.001  # the chance a rule may break on two identical models' samples
# A sample's p99 of n answers reads above the true p99.9 only if more than n/100 answers fall
# beyond it, each with probability 0.001: at n = 200 (3 or more), a chance of 0.001, the
# significance of the other rules; at n = 100 (2 or more) 0.005, and at n = 50 the slowest
# answer alone is the p99. Fewer answers than this: the p99 is not judged.
P99_MIN_ANSWERS = 200


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
    """A rise beyond the allowance, and one Fisher's exact test finds unlikely by chance; with
    no baseline (or an empty one), a rate beyond the allowance above zero, and significantly
    above it (the exact binomial tail at the allowed rate: against zero itself, the first
    error would be significant)."""
    known = baseline is not None and baseline.requests > 0
    before = baseline.error_rate if baseline is not None and known else 0.0
    rise = window.error_rate - before
    errors, answers = round(window.errors), round(window.requests)
    if baseline is not None and known:
        p = fisher_greater(errors, answers, round(baseline.errors), round(baseline.requests))
        against = f"{before:.2%}"
    else:
        p = binomial_greater(errors, answers, t.max_error_rate_increase)
        against = f"{before:.2%} (no baseline: 0%, tested against the allowed " \
                  f"{t.max_error_rate_increase:.2%})"
    passed = rise <= t.max_error_rate_increase or p >= SIGNIFICANCE
    return GateRule(name="error_rate", passed=passed, value=rise,
                    threshold=t.max_error_rate_increase,
                    detail=f"{window.errors:.0f} errors in {window.requests:.0f} answers "
                           f"({window.error_rate:.2%}) against {against}; p = {p:.2g}")


def _unjudged(name: str, threshold: float, window: VersionStats, baseline: VersionStats | None,
              least: int, counted: str) -> GateRule | None:
    """Latency and classes are judged only on enough answers, against a baseline of enough."""
    if baseline is None:
        return GateRule(name=name, passed=True, threshold=threshold,
                        detail="not judged: no baseline")
    mine = window.requests if counted == "requests" else window.answers
    theirs = baseline.requests if counted == "requests" else baseline.answers
    for whose, n in (("", mine), ("baseline: ", theirs)):
        if n < least:
            return GateRule(name=name, passed=True, threshold=threshold,
                            detail=f"not judged: {whose}{n:.0f} answers < {least}")
    return None


def _p99(window: VersionStats, baseline: VersionStats | None, t: GuardThresholds) -> GateRule:
    least = max(t.min_requests, P99_MIN_ANSWERS)
    skipped = _unjudged("p99_latency", t.max_p99_ratio, window, baseline, least, "requests")
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
                    detail=f"p99 {new * 1000:.3g} ms against {old * 1000:.3g} ms "
                           f"(never too slow below {t.p99_floor_seconds * 1000:g} ms)")


def _classes(window: VersionStats, baseline: VersionStats | None,
             t: GuardThresholds) -> GateRule:
    skipped = _unjudged("class_distribution", t.max_class_distance, window, baseline,
                        t.min_requests, "answers")
    if skipped is not None:
        return skipped
    assert baseline is not None
    distance = class_distance(window.classes, baseline.classes)
    g, df, p = g_test(window.classes, baseline.classes)
    return GateRule(name="class_distribution",
                    passed=distance <= t.max_class_distance or p >= SIGNIFICANCE,
                    value=round(distance, 4), threshold=t.max_class_distance,
                    detail=f"Jensen-Shannon distance {distance:.3f} between the predicted "
                           f"classes of {window.answers:.0f} and {baseline.answers:.0f} answers"
                           + _moved(window.classes, baseline.classes)
                           + f"; p = {p:.2g} (G-test, G = {g:.1f}, {df} df)")


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
    """The Jensen-Shannon distance (base 2: 0 alike, 1 disjoint) between two class counts, as
    the data gate measures drift (``dataset.validation.js_distance``); 0 when either is empty."""
    keys = sorted({*a, *b})
    if not keys or sum(a.values()) <= 0 or sum(b.values()) <= 0:
        return 0.0
    return js_distance(np.array([a.get(k, 0.0) for k in keys], float),
                       np.array([b.get(k, 0.0) for k in keys], float))


def g_test(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, int, float]:
    """The G-test of independence of two class counts (a 2 x K table, classes neither
    predicted left out): G, its degrees of freedom and the chance of so large a G alike
    (with Williams' correction)."""
    keys = [k for k in {*a, *b} if a.get(k, 0.0) + b.get(k, 0.0) > 0]
    rows = (sum(a.get(k, 0.0) for k in keys), sum(b.get(k, 0.0) for k in keys))
    total = sum(rows)
    if len(keys) < 2 or min(rows) <= 0:
        return 0.0, 0, 1.0
    g = 0.0
    for k in keys:
        column = a.get(k, 0.0) + b.get(k, 0.0)
        for observed, row in zip((a.get(k, 0.0), b.get(k, 0.0)), rows, strict=True):
            if observed > 0:
                g += 2 * observed * math.log(observed * total / (row * column))
    df = len(keys) - 1
    # Williams' correction: G / q is nearer chi-square on few answers per class
    q = 1 + (total * sum(1 / r for r in rows) - 1) * (
        total * sum(1 / (a.get(k, 0.0) + b.get(k, 0.0)) for k in keys) - 1) / (6 * total * df)
    return g, df, chi2_sf(g / q, df)


def chi2_sf(x: float, df: int) -> float:
    """The chi-square survival function: the regularized upper incomplete gamma Q(df/2, x/2),
    by its series below s + 1 and its continued fraction (Lentz) above."""
    if x <= 0:
        return 1.0
    s, z = df / 2, x / 2
    scale = math.exp(-z + s * math.log(z) - math.lgamma(s))
    if z < s + 1:
        term = total = 1 / s
        n = s
        while term > total * 1e-16:
            n += 1
            term *= z / n
            total += term
        return max(0.0, 1.0 - scale * total)
    tiny = 1e-300
    b = z + 1 - s
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - s)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return min(1.0, scale * h)


def _lchoose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _upper_tail(log_pmf: Callable[[int], float], start: int, stop: int) -> float:
    """The sum of a unimodal pmf from ``start`` to ``stop``, stopped once terms are past its
    peak and too small to matter."""
    total, peak = 0.0, 0.0
    for x in range(start, stop + 1):
        term = math.exp(log_pmf(x))
        total += term
        if term < peak and term < total * 1e-17:
            break
        peak = max(peak, term)
    return min(1.0, total)


def fisher_greater(errors: int, answers: int, base_errors: int, base_answers: int) -> float:
    """Fisher's exact test, one-sided: the chance that ``errors`` or more of all the errors
    fall among the window's ``answers`` if both versions erred alike (hypergeometric tail)."""
    if errors <= 0:
        return 1.0
    m, n = errors + base_errors, answers + base_answers
    return _upper_tail(lambda x: _lchoose(m, x) + _lchoose(n - m, answers - x)
                       - _lchoose(n, answers), errors, min(m, answers))


def binomial_greater(k: int, n: int, rate: float) -> float:
    """The exact binomial tail: the chance of ``k`` or more errors in ``n`` answers at
    ``rate``."""
    if k <= 0 or rate >= 1:
        return 1.0
    if rate <= 0:
        return 0.0
    return _upper_tail(lambda x: _lchoose(n, x) + x * math.log(rate)
                       + (n - x) * math.log1p(-rate), k, n)
