import os
import time

import pytest

from dataset import gc
from core.cache_policy import Policy
from dataset.cache import ingestion_cache
from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from dataset.seed import write_png_increment
from dataset.store import verify
from tests.conftest import write_dataset
from workflows import steps


def _age(folder, seconds):
    past = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (past, past))


@pytest.fixture
def store_with_two_versions(tmp_path):
    """Version 1: the base files. Version 2: the same plus an increment (shares the base units)."""
    root = write_dataset(tmp_path / "data", train=300, test=100)
    store = tmp_path / "store"
    old = ingest(root, store, fingerprint(root), dataset_key="v1").dataset_uri
    write_png_increment(root, "b1", 20, seed=5)
    new = ingest(root, store, fingerprint(root), dataset_key="v2").dataset_uri
    _age(store, 7200)
    return store, old, new


def test_removes_what_no_live_entry_needs_and_keeps_shared_units(store_with_two_versions):
    store, old, new = store_with_two_versions
    report = gc.collect(store, live={old}, grace_seconds=3600)
    assert report.removed_datasets == [new]
    assert len(report.removed_units) == 1  # the increment's unit; the base units serve v1 too
    assert report.freed_bytes > 0
    assert verify(old) is None  # the live dataset is whole


def test_dry_run_removes_nothing(store_with_two_versions):
    store, old, new = store_with_two_versions
    report = gc.collect(store, live=set(), grace_seconds=3600, dry_run=True)
    assert len(report.removed_datasets) == 2 and len(report.removed_units) == 3
    assert verify(old) is None and verify(new) is None


def test_anything_touched_within_the_grace_period_is_kept(store_with_two_versions):
    store, old, new = store_with_two_versions
    os.utime(os.path.join(new, "metadata.json"))  # just published by a running ingestion
    report = gc.collect(store, live=set(), grace_seconds=3600)
    assert report.removed_datasets == [old] and report.removed_units == []
    assert verify(new) is None


def test_reusing_a_unit_protects_it_from_collection(store_with_two_versions, tmp_path):
    store, old, _ = store_with_two_versions
    root = tmp_path / "data"
    fresh = ingest(root, store, fingerprint(root), dataset_key="v3").dataset_uri  # reuses all
    import shutil

    shutil.rmtree(fresh)  # the dataset is gone, but the units it reused were just touched
    report = gc.collect(store, live=set(), grace_seconds=3600)
    assert report.removed_units == []


def test_old_temporaries_of_crashed_ingestions_go(store_with_two_versions):
    store, old, _ = store_with_two_versions
    leftover = store / "shards" / ".tmp-crashed"
    leftover.mkdir()
    (leftover / "shard-00000.tfrecord").write_bytes(b"half")
    _age(leftover, 7200)
    report = gc.collect(store, live={old}, grace_seconds=3600)
    assert report.removed_temporaries == [str(leftover)] and not leftover.exists()


@pytest.mark.integration
def test_entries_whose_dataset_is_gone_are_dropped(r, tmp_path):
    import shutil

    root = write_dataset(tmp_path / "data", train=300, test=100)
    cache = ingestion_cache(r, ttl_seconds=600)
    fp = fingerprint(root)
    check = steps.check_cache(cache, root, fp, Policy())
    outcome = steps.ingest_step(cache, root, tmp_path / "store", fp, check.key)
    shutil.rmtree(outcome.entry.dataset_uri)
    _age(tmp_path / "store", 7200)
    report, dropped = gc.collect_garbage(cache, tmp_path / "store", grace_seconds=3600)
    assert dropped == [check.key] and cache.get(check.key) is None
    assert len(report.removed_units) == 2  # nothing live uses the train and test units now
