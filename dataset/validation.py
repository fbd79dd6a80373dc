"""The data gate's checks: pure functions of profiles (``dataset.profile``) and thresholds.

Each check measures one value, compares it with its thresholds and says ``pass``, ``warn`` or
``block``. The reference is the dataset the champion was trained on; before any champion,
the checks that need one pass, saying so. "New" images are those of the units the reference
does not have (an increment, or a rewritten split): changes in shares and pixel histograms
are measured on them, so an increment is not diluted by the data it is added to. Where a
value is measured on few images, the block threshold is raised to four standard errors of
that measurement, so that chance alone does not block a clean increment.

The champion's agreement with the new labels needs the champion itself: its figures are
measured by the caller (``workflows.validate``) and judged here (``label_agreement``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.settings import Settings
from dataset import idx
from dataset import profile
from dataset.profile import Profile
from events.payloads import CheckResult

CHECKS_VERSION = "checks-v1"  # bump when a check's measure changes: memoised reports expire
MIN_CLASS_IMAGES = 30  # a class with fewer new images has no pixel histogram worth comparing
Z = 4.0  # standard errors a measurement on few images must exceed to block


@dataclass(frozen=True)
class Limit:
    warn: float
    block: float

    def judge(self, value: float, block: float | None = None) -> str:
        if value > (self.block if block is None else block):
            return "block"
        return "warn" if value > self.warn else "pass"


@dataclass(frozen=True)
class Thresholds:
    class_balance: Limit = Limit(0.05, 0.10)
    pixel_drift: Limit = Limit(0.10, 0.20)
    duplicates: Limit = Limit(0.01, 0.05)
    leakage: Limit = Limit(0.0, 0.01)
    label_agreement: Limit = Limit(0.15, 0.30)
    min_images: int = 200
    min_train: int = 10
    min_test: int = 10

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        s = settings
        return cls(
            Limit(s.validation_class_balance_warn, s.validation_class_balance_block),
            Limit(s.validation_pixel_drift_warn, s.validation_pixel_drift_block),
            Limit(s.validation_duplicates_warn, s.validation_duplicates_block),
            Limit(s.validation_leakage_warn, s.validation_leakage_block),
            Limit(s.validation_label_agreement_warn, s.validation_label_agreement_block),
            s.validation_min_images, s.validation_min_train, s.validation_min_test)


def _result(name: str, value: float | None, threshold: float | None, status: str,
            detail: str) -> CheckResult:
    return CheckResult(name=name, value=None if value is None else round(float(value), 6),
                       threshold=None if threshold is None else round(float(threshold), 6),
                       status=status, detail=detail)  # type: ignore[arg-type]


def new_units(new: Profile, reference: Profile | None) -> frozenset[str]:
    """The units of ``new`` the reference does not have (all of them without a reference)."""
    return new.unit_ids() - (reference.unit_ids() if reference else frozenset())


def labels(new: Profile) -> CheckResult:
    """Labels outside the known classes, or a known class missing from a split."""
    problems = []
    for split in new.splits():
        values, _ = new.split(split)
        counts = np.bincount(values, minlength=idx.NUM_CLASSES)
        unknown = {int(v): int(c) for v, c in enumerate(counts) if v >= idx.NUM_CLASSES and c}
        if unknown:
            shown = ", ".join(f"{v} ({c}x)" for v, c in sorted(unknown.items())[:5])
            problems.append(f"{split}: {sum(unknown.values())} label(s) outside 0-9: {shown}")
        missing = [c for c in range(idx.NUM_CLASSES) if counts[c] == 0]
        if missing:
            problems.append(f"{split}: class(es) {missing} missing")
    count = len(problems)
    return _result("labels", count, 0, "block" if count else "pass",
                   "; ".join(problems) or "every label is a known class; every class is present")


def _shares(values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values, minlength=idx.NUM_CLASSES)[:idx.NUM_CLASSES].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def class_balance(new: Profile, reference: Profile | None, limit: Limit) -> CheckResult:
    """The largest change of any class's share of a split's new images, against the
    reference split's shares."""
    if reference is None:
        return _result("class_balance", None, limit.block, "pass", "no reference yet")
    fresh = new_units(new, reference)
    worst: tuple[float, float, str] = (0.0, limit.block, "no new images")
    for split in new.splits():
        values, _ = new.split(split, fresh)
        ref_values, _ = reference.split(split)
        if not values.size or not ref_values.size:
            continue
        now, before = _shares(values), _shares(ref_values)
        change = np.abs(now - before)
        c = int(change.argmax())
        noise = Z * math.sqrt(max(before[c] * (1 - before[c]), 1e-4) / values.size)
        block = max(limit.block, noise)
        if change[c] - block > worst[0] - worst[1] or worst[2] == "no new images":
            worst = (float(change[c]), block,
                     f"{split}: class {c} is {now[c]:.1%} of {values.size} new images, "
                     f"{before[c]:.1%} of the reference")
    value, block, detail = worst
    return _result("class_balance", value, block, limit.judge(value, block), detail)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms."""
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def pixel_drift(new: Profile, reference: Profile | None, limit: Limit) -> CheckResult:
    """Per class, the Jensen-Shannon distance between the pixel-intensity histograms of the
    new images and of the reference's, for classes with enough new images."""
    if reference is None:
        return _result("pixel_drift", None, limit.block, "pass", "no reference yet")
    fresh = new_units(new, reference)
    worst, detail = 0.0, "no class has enough new images to compare"
    for split in new.splits():
        values, _ = new.split(split, fresh)
        counts = np.bincount(values, minlength=idx.NUM_CLASSES)
        now, before = new.hist(split, fresh), reference.hist(split)
        for c in range(idx.NUM_CLASSES):
            if counts[c] < MIN_CLASS_IMAGES or before[c].sum() == 0:
                continue
            distance = js_distance(now[c], before[c])
            if distance >= worst:
                worst, detail = distance, (f"{split}: class {c}, {int(counts[c])} new images, "
                                           f"distance {distance:.3f}")
    return _result("pixel_drift", worst, limit.block, limit.judge(worst), detail)


def duplicates(new: Profile, limit: Limit) -> CheckResult:
    """The share of the training split's images that repeat an earlier image exactly."""
    _, hashes = new.split("train")
    if not hashes.size:
        return _result("duplicates", 0.0, limit.block, "pass", "no training images")
    repeated = profile.repeats(hashes)
    share = repeated / hashes.size
    return _result("duplicates", share, limit.block, limit.judge(share),
                   f"{repeated} of {hashes.size} training images repeat another")


def leakage(new: Profile, pinned: Profile | None, limit: Limit) -> CheckResult:
    """The share of the test split's images (and of the pinned evaluation set's) that also
    appear in the training split."""
    _, train = new.split("train")
    found = []
    sets = [("test split", new)] + ([("pinned evaluation set", pinned)] if pinned else [])
    for name, held in sets:
        _, held_out = held.split("test")
        if held_out.size:
            shared = int(profile.member(held_out, train).sum())
            found.append((shared / held_out.size, shared, held_out.size, name))
    if not found:
        return _result("leakage", 0.0, limit.block, "pass", "no test images")
    share, shared, total, name = max(found)
    return _result("leakage", share, limit.block, limit.judge(share),
                   f"{shared} of {total} images of the {name} are in the training split")


def size(new: Profile, reference: Profile | None, limits: Thresholds) -> CheckResult:
    """A split below its minimum blocks; a changed dataset with no new image warns."""
    minimum = {"train": limits.min_train, "test": limits.min_test}
    counts = {split: new.split(split)[0].size for split in ("train", "test")}
    small = [f"{s}: {n} images < {minimum[s]}" for s, n in counts.items() if n < minimum[s]]
    smallest = min(counts.values())
    if small:
        return _result("size", smallest, min(minimum.values()), "block", "; ".join(small))
    if reference is not None and new.digest != reference.digest:
        fresh = new_units(new, reference)
        added = sum(new.split(s, fresh)[0].size for s in new.splits()) if fresh else 0
        if added == 0:
            return _result("size", smallest, min(minimum.values()), "warn",
                           "the data changed but holds no image the reference does not")
    return _result("size", smallest, min(minimum.values()), "pass",
                   ", ".join(f"{s}: {n} images" for s, n in counts.items()))


@dataclass(frozen=True)
class Agreement:
    """The champion's predictions as confusion counts, ``[label][predicted]``: on the images
    new since the reference (``new``) and on the reference's test split (``reference``)."""

    new: Sequence[Sequence[int]]
    reference: Sequence[Sequence[int]]


Z_WARN = 3.0  # standard errors a measurement on few images must exceed to warn


def label_agreement(agreement: Agreement | None, new_images: int, limits: Thresholds,
                    why_not: str = "") -> CheckResult:
    """How far the champion's agreement with the new labels falls below its accuracy on the
    reference test split: overall; per label with enough new images; and, per label, the
    share of its images the champion gives to one other class, above the reference's (one
    class relabelled as another shows there first)."""
    limit = limits.label_agreement
    if agreement is None:
        return _result("label_agreement", None, limit.block, "pass",
                       why_not or "no champion to compare with")
    new = np.asarray(agreement.new, np.float64)
    ref = np.asarray(agreement.reference, np.float64)
    n_new, n_ref = new.sum(axis=1), ref.sum(axis=1)
    acc_new = np.trace(new) / max(new.sum(), 1.0)
    acc_ref = np.trace(ref) / max(ref.sum(), 1.0)
    measures = [(acc_ref - acc_new, acc_ref, new.sum(), ref.sum(),
                 f"overall: the champion agrees with {acc_new:.1%} of {int(new.sum())} new "
                 f"labels, against {acc_ref:.1%} on the reference test split")]
    for label in range(len(new)):
        if n_new[label] < MIN_CLASS_IMAGES or n_ref[label] == 0:
            continue
        now, before = new[label] / n_new[label], ref[label] / n_ref[label]
        measures.append((before[label] - now[label], before[label], n_new[label], n_ref[label],
                         f"label {label}: the champion agrees with {now[label]:.1%} of "
                         f"{int(n_new[label])} new labels, against {before[label]:.1%}"))
        for other in range(len(new)):
            if other != label:
                measures.append((now[other] - before[other], before[other], n_new[label],
                                 n_ref[label], f"label {label}: the champion calls "
                                 f"{now[other]:.1%} of {int(n_new[label])} new images class "
                                 f"{other}, against {before[other]:.1%}"))
    judged = []
    for change, before, n, n0, detail in measures:
        p = min(max(before, 0.05), 0.95)
        noise = math.sqrt(p * (1 - p) / max(n, 1) + p * (1 - p) / max(n0, 1))
        block, warn = max(limit.block, Z * noise), max(limit.warn, Z_WARN * noise)
        status = "block" if change > block else "warn" if change > warn else "pass"
        judged.append((change - block, change, block, status, detail))
    _, value, block, status, detail = max(judged)
    return _result("label_agreement", value, block, status,
                   f"{new_images} new labelled images; worst: {detail}")


def status(checks: Sequence[CheckResult], mode: str) -> str:
    """The report's status: ``blocked`` when a check blocks and the run's mode is ``block``;
    ``warn`` when any check did not pass; else ``pass``."""
    if any(c.status == "block" for c in checks) and mode == "block":
        return "blocked"
    return "warn" if any(c.status != "pass" for c in checks) else "pass"
