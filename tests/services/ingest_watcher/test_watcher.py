import os

import pytest

from events.payloads import Origin
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
    assert event.data.origin == Origin(kind="folder", folder=str(dataset.resolve()))
    assert _settle(watcher) == [None, None]  # nothing changed: nothing emitted
    stream = read_stream(r)
    assert [e["type"] for e in stream] == ["dev.retrain.dataset.updated"]
    assert stream[0]["id"] == f"fashion-mnist@1:{event.data.digest[:16]}"


def test_data_returning_to_earlier_content_is_a_change_with_its_own_event(r, dataset, tmp_path):
    """A -> B -> A (bad data rolled back) starts a run each time: the trigger's dedup by
    (source, id) must not drop the return to A as a repeat of the first A."""
    from events.dedup import Deduplicator

    watcher = _watcher(r, dataset, tmp_path)
    extra = dataset / "increments" / "b1"
    a = next(e for e in _settle(watcher) if e)
    extra.mkdir(parents=True)
    (extra / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    b = next(e for e in _settle(watcher) if e)
    (extra / "train-images-idx3-ubyte.gz").unlink()
    extra.rmdir()
    back = next(e for e in _settle(watcher) if e)
    assert back.data.digest == a.data.digest and back.data.previous_digest == b.data.digest
    assert len({a.id, b.id, back.id}) == 3
    dedup = Deduplicator(r, 3600, "trigger")
    assert all(dedup.first_time(e) for e in (a, b, back))


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


def _running(r, root, tmp_path, settle, interval=30.0):
    """A watcher loop whose rescan is too rare to explain anything a test sees within
    seconds: what it sees comes from file-system notifications."""
    import threading
    import time

    watcher = DirectoryWatcher(root, RedisStreamSink(r), r, tmp_path / "state", settle=settle,
                               interval=interval)
    time.sleep(settle)
    assert [e is not None for e in _settle(watcher)] == [False, True]  # the initial sight
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    return watcher, stop, thread


def _wait(condition, seconds=20):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_notifications_bring_a_dropped_file_at_once(r, dataset, tmp_path):
    import time

    watcher, stop, thread = _running(r, dataset, tmp_path, settle=0.3)
    try:
        _wait(lambda: watcher.notifications)
        time.sleep(0.5)
        dropped = time.monotonic()
        (dataset / "increments" / "b1").mkdir(parents=True)
        (dataset / "increments" / "b1" / "train-labels-idx1-ubyte.gz").write_bytes(b"x" * 100)
        _wait(lambda: watcher.emitted == 2, seconds=10)
        assert time.monotonic() - dropped < 5  # far below the 30 s rescan
        last = read_stream(r)[-1]
        assert last["data"]["files"]["added"] == ["increments/b1/train-labels-idx1-ubyte.gz"]
    finally:
        stop.set()
        stopped = time.monotonic()
        thread.join()
    assert time.monotonic() - stopped < 2  # a stop does not wait out the 30 s rescan interval


def test_five_hundred_files_at_once_and_a_slow_copy_each_yield_one_event(r, dataset, tmp_path):
    import time

    watcher, stop, thread = _running(r, dataset, tmp_path, settle=0.5)
    try:
        _wait(lambda: watcher.notifications)
        batch = dataset / "increments" / "b2" / "T-shirt_top"
        batch.mkdir(parents=True)
        for n in range(500):
            (batch / f"{n:04d}.png").write_bytes(bytes([n % 256]) * 64)
        _wait(lambda: watcher.emitted == 2)
        time.sleep(1.0)
        assert watcher.emitted == 2
        assert len(read_stream(r)[-1]["data"]["files"]["added"]) == 500

        big = dataset / "increments" / "b3" / "train-images-idx3-ubyte.gz"
        big.parent.mkdir(parents=True)
        with big.open("wb") as f:  # 30 MB copied in slowly: 30 writes, 0.1 s apart
            for _ in range(30):
                f.write(os.urandom(1024 * 1024))
                f.flush()
                time.sleep(0.1)
        _wait(lambda: watcher.emitted == 3)
        time.sleep(1.0)
        assert watcher.emitted == 3  # one event, after the copy, for the whole file
        from dataset.fingerprint import fingerprint

        assert read_stream(r)[-1]["data"]["digest"] == fingerprint(dataset).digest
    finally:
        stop.set()
        thread.join()


def test_a_folder_that_does_not_exist_yet_is_awaited_then_watched(r, tmp_path, caplog):
    """A fresh install: the watcher starts before its folder. It says, once and at info level,
    that it waits for the folder (not that notifications failed), and once the folder appears
    with data it emits for it and follows it with file-system notifications."""
    import logging
    import threading

    from tests.conftest import write_dataset

    root = tmp_path / "volume" / "fashion-mnist"
    watcher = DirectoryWatcher(root, RedisStreamSink(r), r, tmp_path / "state", settle=0.0,
                               interval=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.INFO, logger="services.ingest_watcher"):
        thread.start()
        try:
            _wait(lambda: any("waiting for it to appear" in rec.getMessage()
                              for rec in caplog.records))
            staging = write_dataset(tmp_path / "staging", train=40, test=10)
            root.parent.mkdir()
            staging.rename(root)  # the folder appears with its data at once
            _wait(lambda: watcher.emitted == 1)
            _wait(lambda: watcher.notifications)  # followed by notifications from now on
        finally:
            stop.set()
            thread.join()
    waiting = [rec for rec in caplog.records if "waiting for it to appear" in rec.getMessage()]
    assert [rec.levelno for rec in waiting] == [logging.INFO]
    assert str(root) in waiting[0].getMessage()
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == []
    assert read_stream(r)[0]["data"]["uri"] == str(root)
