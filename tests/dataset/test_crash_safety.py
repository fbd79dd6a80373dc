"""Single flight and atomicity when the ingesting process is SIGKILLed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cache_policy import Policy
from dataset.cache import PREFIX, ingestion_cache
from dataset.fingerprint import fingerprint
from dataset.store import TMP_PREFIX, verify
from workflows import steps

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _child(redis_url, data, store, lease_ms=1500):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.dataset.ingest_child", redis_url, str(data), str(store),
         str(lease_ms)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _visible(store):
    """Published datasets and shard units (temporaries are hidden by their name)."""
    return [p for sub in ("datasets", "shards") if (store / sub).is_dir()
            for p in (store / sub).iterdir() if not p.name.startswith(TMP_PREFIX)]


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """Large enough that ingestion takes a good fraction of a second (tiled, to write fast)."""
    import numpy as np

    from dataset import idx
    from dataset.layout import BASE_FILES
    from dataset.seed import generate

    root = tmp_path_factory.mktemp("big") / "data"
    images, labels = generate(2_000, seed=11)
    for split, tiles in (("train", 12), ("test", 1)):
        idx.write_images(root / BASE_FILES[split][0], np.tile(images, (tiles, 1, 1)))
        idx.write_labels(root / BASE_FILES[split][1], np.tile(labels, tiles))
    return root


@pytest.fixture(scope="module")
def ingest_seconds(redis_handle, big_dataset, tmp_path_factory):
    """How long an undisturbed ingestion takes in a child, to spread the kill points over it."""
    redis_handle.client.flushdb()
    probe = _child(redis_handle.url, big_dataset, tmp_path_factory.mktemp("probe"))
    _wait_for(lambda: redis_handle.client.keys(PREFIX + "lock:*"))
    started = time.monotonic()
    assert json.loads(probe.communicate(timeout=120)[0])["ingested"]
    return time.monotonic() - started


def test_a_killed_lock_holder_is_taken_over_and_its_late_fence_is_refused(
        r, redis_handle, big_dataset, tmp_path):
    store = tmp_path / "store"
    holder = _child(redis_handle.url, big_dataset, store)
    # kill it mid-ingestion: it holds the lease and has started writing shards
    _wait_for(lambda: r.keys(PREFIX + "lock:*") and (store / "shards").is_dir()
              and any(p.name.startswith(TMP_PREFIX) for p in (store / "shards").iterdir()))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _visible(store) == [] or all((p / "unit.json").is_file() for p in _visible(store))

    cache = ingestion_cache(r, ttl_seconds=600)
    fp = fingerprint(big_dataset)
    key = steps.check_cache(cache, big_dataset, fp, Policy()).key
    started = time.monotonic()
    outcome = steps.ingest_step(cache, big_dataset, store, fp, key, lease_ms=1500)
    assert outcome.ingested  # took over once the dead holder's lease lapsed
    assert time.monotonic() - started < 30
    assert outcome.entry.fence == 2  # the dead holder's fence was 1: a late write would lose
    assert verify(outcome.entry.dataset_uri) is None


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 0.9])
def test_sigkill_at_any_point_leaves_no_partial_dataset_and_no_entry(
        ingest_seconds, r, redis_handle, big_dataset, tmp_path, fraction):
    store = tmp_path / "store"
    victim = _child(redis_handle.url, big_dataset, store)
    _wait_for(lambda: r.keys(PREFIX + "lock:*"))
    time.sleep(ingest_seconds * fraction)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    cache = ingestion_cache(r, ttl_seconds=600)
    entries = cache.entries()
    for entry in entries:  # an entry exists only for a dataset that is complete
        assert verify(entry.dataset_uri) is None
    for path in _visible(store):  # what is visible is whole
        marker = "metadata.json" if path.parent.name == "datasets" else "unit.json"
        assert (path / marker).is_file(), f"{path} is visible but incomplete"

    fp = fingerprint(big_dataset)
    check = steps.check_cache(cache, big_dataset, fp, Policy())
    if not check.decision.hit:
        outcome = steps.ingest_step(cache, big_dataset, store, fp, check.key, lease_ms=1500)
        assert verify(outcome.entry.dataset_uri) is None
    assert steps.check_cache(cache, big_dataset, fp, Policy()).decision.hit
