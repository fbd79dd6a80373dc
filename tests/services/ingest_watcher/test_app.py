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


def test_rescan_is_guarded_by_the_api_key_check_of_every_service(r, tmp_path):
    watcher = DirectoryWatcher(tmp_path, RedisStreamSink(r), r, tmp_path / "state")
    guarded = TestClient(create_app(watcher, api_keys=("k",)))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k"}):
        refused = guarded.post("/rescan", headers=headers)
        challenge = ('Bearer error="invalid_token"'  # RFC 6750: a bearer key sent, not ours
                     if headers.get("Authorization", "").startswith("Bearer") else "Bearer")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == challenge
        assert "RETRAIN_API_KEYS" in refused.json()["error"]
    assert guarded.post("/rescan", headers={"Authorization": "Bearer k"}).json() == {
        "rescan": "requested"}
    open_ = TestClient(create_app(watcher))  # no key configured: an open watcher
    assert open_.post("/rescan").status_code == 202


def test_webhook_refusals_are_counted_by_provider_and_logged(r, tmp_path, caplog):
    import logging

    from events.outbox import Outbox
    from services.ingest_watcher.git import GitSource
    from services.ingest_watcher.s3 import BucketSource
    from services.ingest_watcher.webhooks import BucketWebhooks, GitWebhooks

    watcher = DirectoryWatcher(tmp_path, RedisStreamSink(r), r, tmp_path / "state")
    jobs = Outbox(r, None, "unused-jobs")  # never started: nothing here is accepted
    client = TestClient(create_app(
        watcher, api_keys=("k",),  # the watcher's own key is not the providers' secrets
        git=GitWebhooks(GitSource("https://git.example/data.git"), jobs, "secret", "token"),
        bucket=BucketWebhooks(BucketSource.parse("s3://b/p"), jobs, "bucket-token")))
    bucket_auth = {"Authorization": "Bearer bucket-token"}
    with caplog.at_level(logging.WARNING, logger="services.ingest_watcher"):
        big = client.post("/webhooks/s3", content=b"{" + b" " * (64 * 1024), headers=bucket_auth)
        assert big.status_code == 413 and "exceeds the limit of 65536" in big.json()["error"]
        assert client.post("/webhooks/s3", content=b"{no", headers=bucket_auth).status_code == 400
        assert client.post("/webhooks/gitlab", headers={"X-Gitlab-Token": "k"}).status_code == 401
        assert client.post("/webhooks/github", content=b"{}").status_code == 401
    metrics = client.get("/metrics").text
    for provider, outcome in (("s3", "413"), ("s3", "400"), ("gitlab", "401"), ("github", "401")):
        assert (f'retrain_watcher_webhooks_total{{outcome="{outcome}",provider="{provider}"}} 1.0'
                in metrics)
    assert [rec.getMessage()[:27] for rec in caplog.records] == [
        "s3 webhook refused (413): b", "s3 webhook refused (400): b",
        "gitlab webhook refused (401", "github webhook refused (401"]
    assert all(rec.levelname == "WARNING" for rec in caplog.records)
