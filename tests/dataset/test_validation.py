"""The data gate's checks as pure functions of profiles (the runner-level cases, with real
data and the real champion, are in tests/workflows/test_data_gate.py)."""

from __future__ import annotations

import numpy as np

from dataset import profile, validation
from dataset.profile import BINS, Profile, Profiler, UnitProfile
from dataset.seed import generate


def _unit(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> UnitProfile:
    profiler = Profiler()
    profiler.add(images, labels)
    return UnitProfile(name, split, labels, profile.image_hashes(images), profiler.hist)


def test_hashes_tell_images_apart_and_equal_images_alike():
    images, _ = generate(500, 1)
    hashes = profile.image_hashes(images)
    assert hashes.dtype == np.uint64 and np.unique(hashes).size == 500
    one_pixel = images.copy()
    one_pixel[7, 27, 27] ^= 1
    assert (profile.image_hashes(one_pixel) != hashes).sum() == 1
    assert (profile.image_hashes(images[::-1].copy())[::-1] == hashes).all()


def test_membership_and_repeats_match_numpys_own():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2**64, 2000, dtype=np.uint64)
    known = np.concatenate([values[:300], rng.integers(0, 2**64, 5000, dtype=np.uint64)])
    assert (profile.member(values, known) == np.isin(values, known)).all()
    assert profile.member(values, np.zeros(0, np.uint64)).sum() == 0
    doubled = np.concatenate([values, values[:123], values[:5]])
    assert profile.repeats(doubled) == doubled.size - np.unique(doubled).size == 128


def test_the_histograms_count_the_sampled_pixels_of_each_known_class():
    images, labels = generate(200, 2)
    labels = labels.copy()
    labels[:3] = 12  # unknown: counted among the labels, not in any class's histogram
    profiler = Profiler()
    profiler.add(images, labels)
    per_image = len(range(0, 28 * 28, profile.STRIDE))
    assert profiler.hist.shape == (10, BINS)
    assert profiler.hist.sum() == per_image * 197
    assert (profiler.hist.sum(axis=1) == np.bincount(labels[3:], minlength=10) * per_image).all()


def test_jensen_shannon_distance_is_zero_for_the_same_shape_and_one_for_disjoint():
    p = np.array([1, 2, 3, 0], float)
    assert validation.js_distance(p, 10 * p) == 0
    assert abs(validation.js_distance(np.array([1, 0.0]), np.array([0, 1.0])) - 1) < 1e-12


def test_a_shift_in_shares_blocks_only_beyond_chance_for_the_images_measured():
    images, labels = generate(3000, 4)
    reference = Profile("r", "r", (_unit("base", "train", images[:2000], labels[:2000]),))
    limit = validation.Limit(0.05, 0.10)
    small = labels[2000:2040].copy()
    small[:6] = 3  # 40 images: a swing of 12 to 15 points is within four standard errors
    tiny = Profile("n", "n", reference.units + (_unit("push", "train", images[2000:2040], small),))
    check = validation.class_balance(tiny, reference, limit)
    assert check.value > 0.10 and check.threshold > check.value and check.status != "block"
    skewed = np.where(labels[2000:] < 5, 3, labels[2000:])  # half the push relabelled as dresses
    big = Profile("m", "m", reference.units + (_unit("push", "train", images[2000:], skewed),))
    check = validation.class_balance(big, reference, limit)
    assert check.status == "block" and check.threshold == 0.10 and "class 3" in check.detail


def test_the_report_is_blocked_only_in_block_mode():
    block = validation._result("labels", 1, 0, "block", "x")
    fine = validation._result("size", 5, 1, "pass", "y")
    assert validation.status([block, fine], "block") == "blocked"
    assert validation.status([block, fine], "warn") == "warn"
    assert validation.status([fine], "block") == "pass"
