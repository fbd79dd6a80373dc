"""The watcher's HTTP face: health, metrics, and a rescan on request."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from events.sinks import RedisStreamSink, read_stream
from services.ingest_watcher.app import create_app
from services.ingest_watcher.watcher import DirectoryWatcher

pytestmark = pytest.mark.integration


def test_health_metrics_and_an_immediate_rescan(r, dataset, tmp_path):
    watcher = DirectoryWatcher(dataset, RedisStreamSink(r), r, tmp_path / "state",
                               interval=30.0, settle=0.0)  # on its own it would scan twice a minute
    client = TestClient(create_app(watcher, api_keys=("k",)))
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while watcher.scans < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/healthz").json()["scans"] == 1
        assert client.post("/rescan").status_code == 401
        assert client.post("/rescan", headers={"Authorization": "Bearer nope"}).status_code == 401
        started = time.monotonic()
        assert client.post("/rescan", headers={"Authorization": "Bearer k"}).status_code == 202
        while not read_stream(r):  # the second scan sees the same digest: settled, emitted
            assert time.monotonic() - started < 5, "the rescan did not happen"
            time.sleep(0.01)
        metrics = client.get("/metrics").text
        assert "retrain_watcher_events 1.0" in metrics and "retrain_watcher_scans 2.0" in metrics
    finally:
        stop.set()
        watcher.rescan()
        loop.join(timeout=5)


def test_health_is_503_when_the_root_is_gone(r, tmp_path):
    root = tmp_path / "gone"
    root.mkdir()
    watcher = DirectoryWatcher(root, RedisStreamSink(r), r, tmp_path / "state")
    root.rmdir()
    assert TestClient(create_app(watcher)).get("/healthz").status_code == 503
