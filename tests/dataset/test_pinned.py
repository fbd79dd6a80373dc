"""The pinned evaluation set: the first ingestion pins its dataset once, race-free; pinning
another one replaces it whole; what cannot be pinned is refused naming why."""

import json
import threading

import pytest

from dataset import pinned
from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from tests.conftest import write_dataset


@pytest.fixture
def two_datasets(tmp_path):
    store = tmp_path / "store"
    uris = []
    for n in (1, 2):
        root = write_dataset(tmp_path / f"data{n}", train=50, test=30, seed=n * 10)
        uris.append(ingest(root, store, fingerprint(root), dataset_key=f"key{n}").dataset_uri)
    return store, uris


def test_nothing_is_pinned_in_a_new_store(tmp_path):
    assert pinned.current(tmp_path / "store") is None


def test_the_first_dataset_is_pinned_and_stays_pinned(two_datasets):
    store, (first, second) = two_datasets
    assert pinned.store_of(first) == store
    got = pinned.pin_first(store, first)
    meta = json.loads((store / "datasets" / "key1" / "metadata.json").read_text())
    assert (got.key, got.digest, got.dataset_uri, got.how) == (
        "key1", meta["digest"], str(store / "datasets" / "key1"), pinned.FIRST)
    assert pinned.pin_first(store, second) == got  # a later ingestion changes nothing
    assert pinned.current(store) == got


def test_concurrent_first_ingestions_pin_exactly_one(two_datasets):
    store, uris = two_datasets
    results, start = [], threading.Barrier(8)

    def first(uri):
        start.wait()
        results.append(pinned.pin_first(store, uri))

    threads = [threading.Thread(target=first, args=(uris[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and results[0] == pinned.current(store)
    assert [p.name for p in store.iterdir() if p.name.startswith(".tmp-")] == []


def test_pin_replaces_what_is_pinned(two_datasets):
    store, (first, second) = two_datasets
    pinned.pin_first(store, first)
    chosen = pinned.pin(store, second, "retrain golden set")
    assert pinned.current(store) == chosen and chosen.key == "key2"
    assert chosen.how == "retrain golden set"


def test_what_cannot_be_pinned_is_refused_naming_why(two_datasets, tmp_path):
    store, (first, _) = two_datasets
    with pytest.raises(pinned.PinnedSetError, match="not an ingested dataset of the store"):
        pinned.pin(tmp_path / "elsewhere", first, "retrain golden set")
    with pytest.raises(pinned.PinnedSetError, match="no such ingested dataset"):
        pinned.pin(store, str(store / "datasets" / "nope"), "retrain golden set")
    assert pinned.current(store) is None
    (store / "pinned.json").write_text("{not json")
    with pytest.raises(pinned.PinnedSetError, match="pinned.json: not a pinned evaluation set"):
        pinned.current(store)
