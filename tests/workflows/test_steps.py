import threading

import pytest

from core.cache_policy import Policy
from dataset.cache import ingestion_cache
from dataset.errors import DatasetNotFoundError, UnsupportedSourceError
from dataset.fingerprint import fingerprint
from workflows import steps

pytestmark = pytest.mark.integration


def test_concurrent_runs_with_the_same_key_ingest_once(r, dataset, tmp_path):
    cache = ingestion_cache(r, ttl_seconds=600)
    fp = fingerprint(dataset)
    check = steps.check_cache(cache, dataset, fp, Policy())
    assert not check.decision.hit
    outcomes = []
    barrier = threading.Barrier(6)

    def run():
        barrier.wait()
        outcomes.append(steps.ingest_step(cache, dataset, tmp_path / "store", fp, check.key))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(o.ingested for o in outcomes) == 1
    assert len({o.entry.dataset_uri for o in outcomes}) == 1
    assert steps.check_cache(cache, dataset, fp, Policy()).decision.hit


def test_a_hit_whose_files_are_gone_becomes_a_miss(r, dataset, tmp_path):
    import shutil

    cache = ingestion_cache(r, ttl_seconds=600)
    fp = fingerprint(dataset)
    key = steps.check_cache(cache, dataset, fp, Policy()).key
    steps.ingest_step(cache, dataset, tmp_path / "store", fp, key)
    shutil.rmtree(tmp_path / "store" / "shards")
    decision = steps.check_cache(cache, dataset, fp, Policy()).decision
    assert not decision.hit and "missing" in decision.reason
    assert cache.get(key) is None  # replaced by the next ingestion


def test_data_uris_are_checked(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such folder"):
        steps.resolve_root(str(tmp_path / "nope"))
    with pytest.raises(UnsupportedSourceError, match="s3:// is not supported"):
        steps.resolve_root("s3://bucket/prefix")
    assert steps.resolve_root(f"file://{tmp_path}") == tmp_path.resolve()


def test_explaining_changes_nothing(r, dataset, tmp_path):
    cache = ingestion_cache(r, ttl_seconds=600)
    fp = fingerprint(dataset)
    key = steps.check_cache(cache, dataset, fp, Policy()).key
    steps.ingest_step(cache, dataset, tmp_path / "store", fp, key)
    ttl_before = r.ttl("retrain:cache:entry:" + key)
    r.expire("retrain:cache:entry:" + key, 100)
    check = steps.explain_cache(cache, dataset, fp, Policy())
    assert check.decision.hit and check.key == key
    assert check.parts["digest"] == fp.digest and check.parts["params"] == {"shard_size": 10000}
    assert cache.get(key).hits == 0 and r.ttl("retrain:cache:entry:" + key) <= 100 < ttl_before
    # a stale entry is explained as a miss but left for the run to replace
    assert not steps.explain_cache(cache, dataset, fp, Policy.parse("max-age=0s")).decision.hit
    assert cache.get(key) is not None


def test_a_step_presents_the_api_key_its_receiver_requires(r, redis_handle, dataset, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from core.http import BackgroundServer, bind
    from events.dedup import Deduplicator
    from workflows.trigger import create_app

    received = []
    receiver = BackgroundServer(create_app(Deduplicator(r, 600, "keyed"), received.append,
                                           api_keys=("k-123",)),
                                bind("127.0.0.1", 0, "receiver"), "receiver").start()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_API_KEYS": "k-123"}

    def step(*args):
        done = subprocess.run([sys.executable, "-m", "retrain.cli", "step", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    try:
        key = step("check-cache", "--data", str(dataset))["key"]
        step("ingest", "--data", str(dataset), "--key", key, "--run-id", "wf-1",
             "--sink", receiver.url + "/events")
    finally:
        receiver.stop()
    assert [e.type.value for e in received] == ["dev.retrain.ingestion.completed"]
