"""The data gate's checks as pure functions of profiles (the runner-level cases, with real
data and the real champion, are in tests/workflows/test_data_gate.py)."""

from __future__ import annotations

import gzip

import numpy as np

from dataset import profile, validation
from dataset.profile import BINS, Profile, Profiler, UnitProfile
from dataset.seed import generate


def _unit(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> UnitProfile:
    profiler = Profiler()
    profiler.add(images, labels)
    return profiler.unit(name, split)


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


def test_the_histograms_count_the_sampled_pixels_of_each_image_and_each_known_class():
    images, labels = generate(200, 2)
    labels = labels.copy()
    labels[:3] = 12  # unknown: counted among the labels, not in any class's histogram
    unit = _unit("u", "train", images, labels)
    per_image = len(range(0, 28 * 28, profile.STRIDE))
    assert unit.pixels.shape == (200, BINS) and (unit.pixels.sum(axis=1) == per_image).all()
    hist = Profile("k", "d", (unit,)).images("train").class_hist()
    assert hist.shape == (10, BINS) and hist.sum() == per_image * 197
    assert (hist.sum(axis=1) == np.bincount(labels[3:], minlength=10) * per_image).all()
    dark = images[5].copy()
    dark[:] = 0
    assert _unit("d", "train", dark[None], labels[5:6]).pixels[0, 0] == per_image


def test_new_images_are_counted_copy_by_copy_and_split_by_split():
    images, labels = generate(300, 5)
    base_train, base_test = _unit("a", "train", images[:200], labels[:200]), _unit(
        "b", "test", images[200:], labels[200:])
    reference = Profile("r", "r", (base_train, base_test))
    relabelled = labels[:200].copy()
    relabelled[:4] = (relabelled[:4] + 1) % 10
    # the training file rewritten: four labels changed, three images copied, five test images
    rewritten = np.concatenate([images[:200], images[4:7], images[200:205]])
    rewritten_labels = np.concatenate([relabelled, labels[4:7], labels[200:205]])
    new = Profile("n", "n", (_unit("a2", "train", rewritten, rewritten_labels), base_test))
    marks = validation.new_images(new, [reference])
    assert not marks["b"].any()
    assert marks["a2"].tolist() == [True] * 4 + [False] * 196 + [True] * 3 + [True] * 5
    assert all(m.all() for m in validation.new_images(new, []).values())


def test_removed_images_are_the_references_copies_the_new_data_no_longer_holds():
    images, labels = generate(300, 5)
    reference = Profile("r", "r", (_unit("a", "train", images[:200], labels[:200]),
                                   _unit("b", "test", images[200:], labels[200:])))
    relabelled = labels[:200].copy()
    relabelled[:4] = (relabelled[:4] + 1) % 10
    # twenty training images deleted, four relabelled (new, not removed), one test image
    # moved into train (removed from test), an image added
    train = np.concatenate([images[20:200], images[200:201], images[299:300]])
    train_labels = np.concatenate([relabelled[20:200], labels[200:201], labels[299:300]])
    new = Profile("n", "n", (_unit("a2", "train", train, train_labels),
                             _unit("b2", "test", images[201:], labels[201:])))
    assert validation.removed_images(new, reference) == 20 + 1
    relabelled_only = Profile("n", "n", (_unit("a3", "train", images[:200], relabelled),
                                         reference.units[1]))
    assert validation.removed_images(relabelled_only, reference) == 0
    assert validation.removed_images(reference, reference) == 0
    doubled = Profile("d", "d", (_unit("a4", "train", np.concatenate([images[:200], images[:1]]),
                                       np.concatenate([labels[:200], labels[:1]])),
                                 reference.units[1]))
    assert validation.removed_images(reference, doubled) == 1  # one copy of two gone


def test_jensen_shannon_distance_is_zero_for_the_same_shape_and_one_for_disjoint():
    p = np.array([1, 2, 3, 0], float)
    assert validation.js_distance(p, 10 * p) == 0
    assert abs(validation.js_distance(np.array([1, 0.0]), np.array([0, 1.0])) - 1) < 1e-12


def test_a_shift_in_a_splits_shares_blocks_beyond_what_its_new_images_could_move_by_chance():
    images, labels = generate(3000, 4)
    limit = validation.Limit(0.05, 0.10)

    def check(base: int, push_labels: np.ndarray):
        reference = Profile("r", "r", (_unit("base", "train", images[:base], labels[:base]),))
        n = push_labels.size
        new = Profile("n", "n", reference.units + (
            _unit("push", "train", images[2000:2000 + n], push_labels),))
        return validation.class_balance(new, validation.new_images(new, [reference]),
                                        reference, limit)

    few = labels[2000:2040].copy()
    few[:6] = 3  # 40 images on 2,000: the split hardly moves
    assert check(2000, few).status == "pass"
    found = check(2000, np.where(labels[2000:] < 5, 3, labels[2000:]))  # half now dresses
    assert found.status == "block" and found.threshold == 0.10 and "class 3" in found.detail
    tiny = check(30, labels[2000:2030])  # 30 honest images on 30: chance moves shares a lot
    assert tiny.threshold > 0.10 and tiny.status != "block"


def test_the_report_is_blocked_only_in_block_mode():
    block = validation._result("labels", 1, 0, "block", "x")
    fine = validation._result("size", 5, 1, "pass", "y")
    assert validation.status([block, fine], "block") == "blocked"
    assert validation.status([block, fine], "warn") == "warn"
    assert validation.status([fine], "block") == "pass"


def test_a_unit_ingested_before_profiles_gets_one_from_its_shards(tmp_path):
    """An upgraded store: the champion's dataset has no profile; it is rebuilt as ingestion
    would have written it (labels outside the classes too)."""
    from dataset import idx
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from dataset.layout import BASE_FILES
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "data", train=300, test=50)
    labels = idx.read_labels(root / BASE_FILES["train"][1]).copy()
    labels[:3] = [10, 200, 9]
    raw = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels.tobytes()
    (root / BASE_FILES["train"][1]).write_bytes(gzip.compress(raw))
    uri = ingest(root, tmp_path / "store", fingerprint(root), dataset_key="k").dataset_uri
    written = profile.load(uri)
    for unit in written.units:
        (tmp_path / "store" / "shards" / unit.unit / profile.PROFILE_FILE).unlink()
    rebuilt = profile.load(uri)
    for before, after in zip(written.units, rebuilt.units, strict=True):
        assert (before.labels == after.labels).all() and (before.hashes == after.hashes).all()
        assert (before.pixels == after.pixels).all()
    assert rebuilt.images("train").labels[:3].tolist() == [10, 200, 9]
