import os

import pytest

from events.sinks import RedisStreamSink, read_stream
from services.ingest_watcher.watcher import DirectoryWatcher

pytestmark = pytest.mark.integration


def _watcher(r, dataset, tmp_path):
    return DirectoryWatcher(dataset, RedisStreamSink(r), r, tmp_path / "state", settle=0.0)


def _settle(watcher):
    """Scan until the watcher has seen the same digest twice (what its loop does)."""
    return [watcher.scan_once(), watcher.scan_once()]


def test_one_event_per_settled_change(r, dataset, tmp_path):
    watcher = _watcher(r, dataset, tmp_path)
    assert watcher.scan_once() is None  # first sight: not settled yet
    event = watcher.scan_once()
    assert event is not None and event.data.trigger == "watcher"
    assert len(event.data.files.added) == 4 and event.data.previous_digest is None
    assert _settle(watcher) == [None, None]  # nothing changed: nothing emitted
    stream = read_stream(r)
    assert [e["type"] for e in stream] == ["dev.retrain.dataset.updated"]
    assert stream[0]["id"] == f"fashion-mnist@{event.data.digest}"


def test_touching_files_emits_nothing(r, dataset, tmp_path):
    watcher = _watcher(r, dataset, tmp_path)
    _settle(watcher)
    for f in dataset.iterdir():
        os.utime(f, None)
    assert _settle(watcher) == [None, None]


def test_a_restarted_watcher_catches_up_on_changes_only(r, dataset, tmp_path):
    first = _watcher(r, dataset, tmp_path)
    emitted = [e for e in _settle(first) if e]
    (dataset / "increments" / "b1").mkdir(parents=True)
    (dataset / "increments" / "b1" / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    restarted = _watcher(r, dataset, tmp_path)
    event = next(e for e in _settle(restarted) if e)
    assert event.data.previous_digest == emitted[0].data.digest
    assert event.data.files.added == ("increments/b1/train-images-idx3-ubyte.gz",)
    assert _settle(_watcher(r, dataset, tmp_path)) == [None, None]
