import dataclasses
import threading
import time

import pytest

from core.cache_policy import CachePolicyError, Policy
from dataset.cache import CacheEntry, cache_key, decide, ingestion_cache


def _entry(key="k", fence=1, created=None, records=None):
    now = created or time.time()
    return CacheEntry(key=key, digest="d" * 64, dataset_uri="/x", records=records or {"train": 100},
                      per_class={}, created_at=now, last_hit=now, hits=0, fence=fence)


def test_key_depends_on_digest_code_and_params():
    base = cache_key("a", "v1", {"shard_size": 10})
    assert base == cache_key("a", "v1", {"shard_size": 10})
    assert len({base, cache_key("b", "v1", {"shard_size": 10}), cache_key("a", "v2", {"shard_size": 10}),
                cache_key("a", "v1", {"shard_size": 11})}) == 4


@pytest.mark.parametrize("text,kind", [("exact", "exact"), ("max-age=15m", "max-age"),
                                       ("min-change=0.1", "min-change")])
def test_policies_parse(text, kind):
    assert Policy.parse(text).kind == kind


@pytest.mark.parametrize("text", ["fuzzy", "max-age=soon", "min-change=2", "max-age="])
def test_bad_policies_are_refused(text):
    with pytest.raises(CachePolicyError):
        Policy.parse(text)


def test_exact_hit_is_explained():
    d = decide(Policy(), "d" * 64, _entry(created=time.time() - 720), None, lambda e: None, time.time())
    assert d.hit and d.reason.startswith("hit: same content digest dddddddd") and "12 min ago" in d.reason


def test_failed_verification_is_a_miss_with_the_reason():
    d = decide(Policy(), "d", _entry(), None, lambda e: "shard x is missing", time.time())
    assert not d.hit and "shard x is missing" in d.reason


def test_max_age_expires_old_entries():
    old = _entry(created=time.time() - 3600)
    assert not decide(Policy.parse("max-age=30m"), "d", old, None, lambda e: None, time.time()).hit
    assert decide(Policy.parse("max-age=2h"), "d", old, None, lambda e: None, time.time()).hit


def test_min_change_reuses_until_records_grow_enough():
    latest = _entry(records={"train": 1000})
    p = Policy.parse("min-change=0.1")
    assert decide(p, "new", None, latest, lambda e: None, time.time(), new_records=1050).hit
    assert not decide(p, "new", None, latest, lambda e: None, time.time(), new_records=1200).hit


@pytest.mark.integration
def test_sliding_ttl_and_hits(r):
    cache = ingestion_cache(r, ttl_seconds=100)
    entry = _entry()
    lease = cache.acquire("k")
    assert cache.put(dataclasses.replace(entry, fence=lease.fence))
    r.expire("retrain:cache:entry:k", 5)
    touched = cache.touch(cache.get("k"))
    assert touched.hits == 1 and r.ttl("retrain:cache:entry:k") > 50


@pytest.mark.integration
def test_fencing_refuses_a_late_writer(r):
    cache = ingestion_cache(r, ttl_seconds=100)
    old = cache.acquire("k", lease_ms=50)
    time.sleep(0.1)  # lease expires: the holder is presumed dead
    new = cache.acquire("k")
    assert new is not None and new.fence > old.fence
    assert cache.put(_entry(fence=new.fence))
    assert not cache.put(_entry(fence=old.fence))


def _woken(r, let_go) -> tuple[object, float]:
    """What a waiter on a held key gets once the holder does ``let_go(cache, lease)``, and
    how long after."""
    cache = ingestion_cache(r, ttl_seconds=100)
    lease = cache.acquire("k")
    got = []
    waiter = threading.Thread(target=lambda: got.append(cache.wait("k", timeout=10)))
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    let_go(cache, lease)
    waiter.join()
    return got[0], time.monotonic() - started


@pytest.mark.integration
def test_waiters_wake_when_the_holder_publishes(r):
    got, after = _woken(r, lambda cache, lease: cache.put(_entry(fence=lease.fence)))
    assert got is not None and after < 0.5


@pytest.mark.integration
def test_waiters_wake_when_the_holder_lets_go_without_an_entry(r):
    # its ingestion failed: a waiter takes over at once, not after its next poll
    got, after = _woken(r, lambda cache, lease: cache.release(lease))
    assert got is None and after < 0.5


@pytest.mark.integration
def test_entries_expire_by_themselves_unless_hit(r):
    cache = ingestion_cache(r, ttl_seconds=1)
    cache.put(_entry(key="cold"))
    cache.put(_entry(key="warm"))
    time.sleep(0.6)
    cache.touch(cache.get("warm"))  # a hit slides the TTL
    time.sleep(0.7)
    assert cache.get("cold") is None  # nobody swept: Redis expired it
    assert cache.get("warm") is not None
    assert cache.expires_in("cold") == -2
    time.sleep(1.1)
    assert cache.entries() == [] and cache.latest("fashion-mnist") is None


@pytest.mark.integration
def test_entries_lists_every_live_entry_oldest_first(r):
    cache = ingestion_cache(r, ttl_seconds=100)
    for i in range(2500):  # more than one MGET batch
        cache.put(dataclasses.replace(_entry(key=f"k{i}"), created_at=float(i)))
    listed = cache.entries()
    assert len(listed) == 2500 and [e.created_at for e in listed[:3]] == [0.0, 1.0, 2.0]
