"""The data gate's checks: pure functions of profiles (``dataset.profile``) and thresholds.

Each check measures one value, compares it with its thresholds and says ``pass``, ``warn`` or
``block``. The reference is the dataset the champion was trained on; before any champion,
the checks that need one pass, saying so. "New" images are the labelled images the reference
(and data approved since) does not hold, whether they came as an increment or appended to a
rewritten file: shares, pixel histograms, duplicates and leaks are measured on them, so a
push is not diluted by the data it is added to, and what the reference already held (a few
genuine duplicates) is not blamed on it. Where a
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
from dataset.profile import Marks, Profile
from events.payloads import CheckResult

CHECKS_VERSION = "checks-v1"  # bump when a check's measure changes: memoised reports expire
MIN_CLASS_IMAGES = 30  # a class with fewer new images has no pixel histogram worth comparing
MIN_COUNT = 5  # fewer duplicated or leaked images than this only warn
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
    min_images: int = 100
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


def new_images(new: Profile, known: Sequence[Profile]) -> Marks:
    """Per unit of ``new``: which of its images are new, split by split, against ``known``
    (the reference, and data approved since): a labelled image is new when the split holds
    it more often than any of ``known``'s same split did. So an image appended to a
    rewritten file is new and the file's other images are not; a second copy of an old image
    is new; a relabelled image is new; a test image copied into train is new to train.
    Without a reference every image is new."""
    marks: Marks = {}
    for split in new.splits():
        units = [u for u in new.units if u.split == split]
        pairs = np.concatenate([profile.pair_keys(u.hashes, u.labels) for u in units])
        seen = np.zeros(pairs.size, np.int64)
        for other in known:
            theirs = np.sort(other.images(split).pairs())
            if theirs.size:
                count = np.searchsorted(theirs, pairs, "right") - np.searchsorted(theirs, pairs, "left")
                seen = np.maximum(seen, count)
        order = np.argsort(pairs, kind="stable")
        ordered = pairs[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        rank = np.empty(pairs.size, np.int64)  # 0 for a pair's first copy, 1 for its second...
        rank[order] = np.arange(pairs.size) - np.repeat(starts, np.diff(np.r_[starts, pairs.size]))
        fresh = rank >= seen
        at = 0
        for u in units:
            marks[u.unit] = fresh[at:at + u.labels.size]
            at += u.labels.size
    return marks


def removed_images(new: Profile, reference: Profile) -> int:
    """How many of ``reference``'s images ``new`` no longer holds, split by split, copy by
    copy: an image (its content, whatever its label) the split holds fewer times than the
    reference's did counts once per copy gone. A relabelled image is not removed (it is new:
    ``new_images``); an image moved from test to train is removed from test."""
    removed = 0
    for split in reference.splits():
        theirs = np.unique(reference.images(split).hashes, return_counts=True)
        ours = np.sort(new.images(split).hashes)
        held = np.searchsorted(ours, theirs[0], "right") - np.searchsorted(ours, theirs[0], "left")
        removed += int(np.maximum(theirs[1] - held, 0).sum())
    return removed


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def labels(new: Profile, fresh: Marks, reference: Profile | None) -> CheckResult:
    """Labels outside the known classes, or a known class missing from a split. (A push of
    one class's images alone is a common, honest increment: it is the split that must hold
    every class.)"""
    problems = []
    for split in new.splits():
        values = new.images(split).labels
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


def class_balance(new: Profile, fresh: Marks, reference: Profile | None,
                  limit: Limit) -> CheckResult:
    """The largest change of any class's share of a split, against the reference split's
    share (the split the models train and are tested on: a push that adds one class's images
    moves it only as much as it changes the whole)."""
    if reference is None:
        return _result("class_balance", None, limit.block, "pass", "no reference yet")
    worst: tuple[float, float, str] | None = None
    for split in new.splits():
        after = new.images(split).counts()
        before_counts = reference.images(split).counts()
        added = int(new.images(split, fresh).size)
        if not after.sum() or not before_counts.sum():
            continue
        now, before = _shares(after), _shares(before_counts)
        change = np.abs(now - before)
        c = int(change.argmax())
        # the share's chance variation: the new images' class counts are what moved it
        noise = Z * math.sqrt(max(before[c] * (1 - before[c]), 1e-4) * added) / after.sum()
        block = max(limit.block, min(noise, 1.0))
        if worst is None or change[c] - block > worst[0] - worst[1]:
            worst = (float(change[c]), block,
                     f"{split}: class {c} is {now[c]:.1%} of {int(after.sum())} images, "
                     f"{before[c]:.1%} of the reference's ({added} new)")
    if worst is None:
        return _result("class_balance", 0.0, limit.block, "pass", "no split to compare")
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


def pixel_drift(new: Profile, fresh: Marks, reference: Profile | None,
                limit: Limit) -> CheckResult:
    """Per class, the Jensen-Shannon distance between the pixel-intensity histograms of the
    new images and of the reference's, for classes with enough new images."""
    if reference is None:
        return _result("pixel_drift", None, limit.block, "pass", "no reference yet")
    worst, detail = 0.0, "no class has enough new images to compare"
    for split in new.splits():
        added = new.images(split, fresh)
        counts, now = added.counts(), added.class_hist()
        before = reference.images(split).class_hist()
        for c in range(idx.NUM_CLASSES):
            if counts[c] < MIN_CLASS_IMAGES or before[c].sum() == 0:
                continue
            distance = js_distance(now[c], before[c])
            if distance >= worst:
                worst, detail = distance, (f"{split}: class {c}, {int(counts[c])} new images, "
                                           f"distance {distance:.3f}")
    return _result("pixel_drift", worst, limit.block, limit.judge(worst), detail)


def duplicates(new: Profile, fresh: Marks, limit: Limit) -> CheckResult:
    """The share of the training split's new images that repeat another training image
    exactly (duplicates the reference already had are the reference's: not counted)."""
    train = new.images("train").hashes
    added = new.images("train", fresh).hashes
    if not added.size:
        return _result("duplicates", 0.0, limit.block, "pass", "no new training images")
    ordered = np.sort(train)
    copies = np.searchsorted(ordered, added, "right") - np.searchsorted(ordered, added, "left")
    repeated = int((copies > 1).sum())
    share = repeated / added.size
    status = limit.judge(share) if repeated >= MIN_COUNT else ("warn" if repeated else "pass")
    return _result("duplicates", share, limit.block, status,
                   f"{repeated} of {added.size} new training images repeat another training "
                   f"image ({profile.repeats(train)} repeats in the whole split)")


def leakage(new: Profile, fresh: Marks, pinned: Profile | None, limit: Limit) -> CheckResult:
    """New images that cross between held-out and training data (new training images that
    are test or pinned evaluation images; new test images already in training), as a share
    of the new images and of the held-out set they leak from, whichever is larger: a large
    rewrite cannot hide a leak of many test images among its many new ones."""
    train = new.images("train").hashes
    test = new.images("test").hashes
    held = [test] + ([pinned.images("test").hashes] if pinned else [])
    held_out = np.concatenate(held)
    added_train = new.images("train", fresh).hashes
    added_test = new.images("test", fresh).hashes
    into_train = profile.member(added_train, held_out)
    crossed = int(into_train.sum()) + int(profile.member(added_test, train).sum())
    total = added_train.size + added_test.size
    if not total:
        return _result("leakage", 0.0, limit.block, "pass", "no new images")
    leaked_from = max((int(profile.member(h, added_train[into_train]).sum()) / max(h.size, 1)
                       for h in held), default=0.0)
    share = max(crossed / total, leaked_from)
    status = limit.judge(share) if crossed >= MIN_COUNT else ("warn" if crossed else "pass")
    where = "the test split" + (" or the pinned evaluation set" if pinned else "")
    return _result("leakage", share, limit.block, status,
                   f"{crossed} of {total} new images are on both sides of {where} and the "
                   f"training split ({leaked_from:.1%} of a held-out set leaked)")


def size(new: Profile, fresh: Marks, reference: Profile | None, limits: Thresholds) -> CheckResult:
    """A split below its minimum blocks; a changed dataset with no new image warns."""
    minimum = {"train": limits.min_train, "test": limits.min_test}
    counts = {split: new.images(split).size for split in ("train", "test")}
    small = [f"{s}: {n} images < {minimum[s]}" for s, n in counts.items() if n < minimum[s]]
    smallest = min(counts.values())
    if small:
        return _result("size", smallest, min(minimum.values()), "block", "; ".join(small))
    added = sum(int(mask.sum()) for mask in fresh.values())
    if reference is not None and new.digest != reference.digest and added == 0:
        return _result("size", smallest, min(minimum.values()), "warn",
                       "the data changed but holds no image the reference does not")
    return _result("size", smallest, min(minimum.values()), "pass",
                   ", ".join(f"{s}: {n} images" for s, n in counts.items()) + f"; {added} new")


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
