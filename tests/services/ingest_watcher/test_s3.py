"""Bucket prefixes end to end against a real S3-compatible server (moto) on 127.0.0.1, with
boto3 as the client: notifications in the AWS and MinIO formats, polling, the mirror, and
the bad notifications."""

import json
import threading
import time
from urllib.parse import quote_plus

import httpx
import pytest

from core.http import BackgroundServer, bind
from dataset.fingerprint import fingerprint
from events import make_event
from events.dedup import Deduplicator
from events.outbox import Outbox
from events.payloads import Origin, SourceObject
from events.sinks import HttpSink
from services.ingest_watcher.app import create_app
from services.ingest_watcher.fetch import SourceFetcher
from services.ingest_watcher.s3 import BucketMirror, BucketSource, Poller
from services.ingest_watcher.watcher import DirectoryWatcher
from services.ingest_watcher.webhooks import BucketWebhooks
from tests.conftest import free_port, wait_for, write_dataset
from workflows.trigger import create_app as create_trigger

pytestmark = pytest.mark.integration
TOKEN = "bucket-token"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import boto3

    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"data-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    return client, name


def upload_dataset(client, bucket, tmp_path, prefix="datasets/fm/", after_each=None, **kwargs):
    local = write_dataset(tmp_path / f"upload-{time.monotonic_ns()}", **kwargs)
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), bucket, prefix + path.name)
        if after_each:
            after_each(prefix + path.name)
    return local


def record(bucket, key, source="aws:s3", event="ObjectCreated:Put", size=1, etag="x"):
    """One record of a notification, as S3 (``aws:s3``) and MinIO (``minio:s3``) send it: a
    removal names the key alone."""
    named = {"key": quote_plus(key), "sequencer": "0055AED6DCD90281E5"}
    if not event.startswith("ObjectRemoved"):
        named.update(size=size, eTag=etag)
    return {"eventVersion": "2.1", "eventSource": source, "awsRegion": "us-east-1",
            "eventName": event, "s3": {"s3SchemaVersion": "1.0", "configurationId": "retrain",
                                       "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                                       "object": named}}


def etags(client, bucket, keys):
    """Each key's ETag (unquoted, as notifications carry it) and size, as the bucket says."""
    heads = {k: client.head_object(Bucket=bucket, Key=k) for k in keys}
    return {k: (h["ETag"].strip('"'), h["ContentLength"]) for k, h in heads.items()}


@pytest.fixture
def stack(tmp_path, r, s3):
    client, bucket = s3
    received = []
    receiver = BackgroundServer(create_trigger(Deduplicator(r, 600, "s3-test"), received.append),
                                bind("127.0.0.1", 0, "receiver"), "receiver").start()
    events = Outbox(r, HttpSink(receiver.url + "/events", attempts=1), f"s3-ev-{bucket}",
                    first_backoff=0.05).start()
    source = BucketSource.parse(f"s3://{bucket}/datasets/fm")
    mirror = BucketMirror(client, source, tmp_path / "mirror" / "data", settle=0.3)
    watcher = DirectoryWatcher(mirror.folder, events, r, tmp_path / "state")
    jobs = Outbox(r, SourceFetcher(mirror.sync, watcher, origin=mirror.origin),
                  f"s3-jobs-{bucket}", first_backoff=0.05).start()
    server = BackgroundServer(create_app(watcher, (), bucket=BucketWebhooks(source, jobs, TOKEN)),
                              bind("127.0.0.1", 0, "watcher"), "watcher").start()

    class Stack:
        pass

    st = Stack()
    st.client, st.bucket, st.received, st.jobs, st.url, st.mirror = client, bucket, received, jobs, server.url, mirror
    yield st
    server.stop()
    jobs.stop()
    events.stop()
    receiver.stop()


def notify(st, body, token=TOKEN, raw=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(st.url + "/webhooks/s3", content=raw if raw is not None else json.dumps(body),
                      headers={**headers, "Content-Type": "application/json"}, timeout=30)


@pytest.mark.parametrize("origin, trigger", [("aws:s3", "s3"), ("minio:s3", "minio")])
def test_a_notification_mirrors_the_prefix_and_emits_one_event(stack, tmp_path, origin, trigger):
    local = upload_dataset(stack.client, stack.bucket, tmp_path, train=60, test=20)
    stack.client.put_object(Bucket=stack.bucket, Key="elsewhere/unrelated.bin", Body=b"x")
    keys = [f"datasets/fm/{p.name}" for p in sorted(local.iterdir())]
    named = etags(stack.client, stack.bucket, keys)
    answer = notify(stack, {"Records": [record(stack.bucket, k, origin, size=named[k][1],
                                               etag=named[k][0]) for k in keys]})
    assert answer.status_code == 202 and answer.json()["objects"] == 4
    wait_for(lambda: stack.received)
    [event] = stack.received
    assert event.data.trigger == trigger
    assert event.data.origin == Origin(  # what the notification said: keys, ETags, sizes
        kind="bucket", bucket=stack.bucket, objects_total=4,
        objects=tuple(SourceObject(key=k, etag=named[k][0], size=named[k][1]) for k in keys))
    assert event.data.digest == fingerprint(local).digest  # the mirror holds the same bytes
    assert sorted(event.data.files.added) == sorted(p.name for p in local.iterdir())
    assert not (stack.mirror.folder / "unrelated.bin").exists()

    # the same notification again: synced, nothing downloaded, nothing emitted
    assert notify(stack, {"Records": [record(stack.bucket, keys[0], origin)]}).status_code == 202
    wait_for(lambda: stack.jobs.delivered == 2)
    time.sleep(0.3)
    assert len(stack.received) == 1

    # an object removed: the mirror follows, and the event says so
    stack.client.delete_object(Bucket=stack.bucket, Key=keys[0])
    notify(stack, {"Records": [record(stack.bucket, keys[0], origin, "ObjectRemoved:Delete")]})
    wait_for(lambda: len(stack.received) == 2)
    assert list(stack.received[1].data.files.removed) == [keys[0].rsplit("/", 1)[1]]
    assert stack.received[1].data.origin.objects == (SourceObject(key=keys[0]),)


def test_keys_without_a_file_of_their_own_are_skipped_and_later_uploads_still_arrive(
        stack, tmp_path):
    odd = {"datasets/fm/a//b": b"1", "datasets/fm/./c": b"2", "datasets/fm/d": b"3",
           "datasets/fm/d/e": b"4"}
    for key, body in odd.items():
        stack.client.put_object(Bucket=stack.bucket, Key=key, Body=body)
    assert sorted(o["Key"] for o in stack.client.list_objects_v2(
        Bucket=stack.bucket)["Contents"]) == sorted(odd)  # the server keeps them as sent
    answer = notify(stack, {"Records": [record(stack.bucket, k) for k in odd]})
    assert answer.status_code == 202 and answer.json()["objects"] == 2  # d and d/e
    wait_for(lambda: stack.received)
    mirrored = sorted(str(p.relative_to(stack.mirror.folder))
                      for p in stack.mirror.folder.rglob("*") if p.is_file())
    assert mirrored == ["d/e"]
    assert (stack.mirror.folder / "d" / "e").read_bytes() == b"4"
    assert sorted(stack.mirror.skipped) == ["datasets/fm/./c", "datasets/fm/a//b", "datasets/fm/d"]
    assert "both a file and a folder" in stack.mirror.skipped["datasets/fm/d"]

    local = upload_dataset(stack.client, stack.bucket, tmp_path, train=40, test=10)
    keys = [f"datasets/fm/{p.name}" for p in sorted(local.iterdir())]
    assert notify(stack, {"Records": [record(stack.bucket, k) for k in keys]}).status_code == 202
    wait_for(lambda: len(stack.received) == 2)  # the bucket source keeps working
    assert sorted(stack.received[1].data.files.added) == sorted(p.name for p in local.iterdir())
    wait_for(lambda: stack.jobs.pending() == 0)


def test_an_upload_notified_object_by_object_yields_one_event_for_the_whole(stack, tmp_path):
    def notify_and_pause(key):
        assert notify(stack, {"Records": [record(stack.bucket, key, "minio:s3")]}).status_code == 202
        time.sleep(0.1)  # the next object follows while the first notification is handled

    local = upload_dataset(stack.client, stack.bucket, tmp_path, after_each=notify_and_pause,
                           train=60, test=20)
    wait_for(lambda: stack.received)
    wait_for(lambda: stack.jobs.pending() == 0)
    time.sleep(1.0)
    assert len(stack.received) == 1
    assert stack.received[0].data.digest == fingerprint(local).digest
    assert len(stack.received[0].data.files.added) == 4


def test_polling_notices_a_bucket_without_notifications(stack, tmp_path):
    stop = threading.Event()
    requests = []

    def request_sync():
        requests.append(time.monotonic())
        stack.jobs.put(make_event(
            "dataset.updated", {"uri": stack.mirror.source.uri, "trigger": "s3"}, source="poll"))

    poller = threading.Thread(target=Poller(stack.mirror, request_sync, 0.2).run, args=(stop,))
    poller.start()
    try:
        time.sleep(0.5)
        assert requests == []  # an empty prefix, mirrored as empty: nothing to do
        local = upload_dataset(stack.client, stack.bucket, tmp_path, train=40, test=10)
        wait_for(lambda: stack.received)
        assert stack.received[0].data.digest == fingerprint(local).digest
        keys = sorted(f"datasets/fm/{p.name}" for p in local.iterdir())
        named = etags(stack.client, stack.bucket, keys)  # no notification: what the sync fetched
        assert sorted(stack.received[0].data.origin.objects, key=lambda o: o.key) == [
            SourceObject(key=k, etag=named[k][0], size=named[k][1]) for k in keys]
        wait_for(lambda: stack.jobs.pending() == 0)
        time.sleep(0.6)
        settled = len(requests)
        time.sleep(0.6)
        assert len(requests) == settled  # once mirrored, the listing matches: no more syncs
    finally:
        stop.set()
        poller.join()


@pytest.mark.parametrize("body, fragment", [
    ({"nope": 1}, 'a JSON object with a "Records" list'),
    ({"Records": ["x"]}, "Records[0] is not an object"),
    ({"Records": [{"eventSource": "aws:sqs"}]}, "eventSource is 'aws:sqs'"),
    ({"Records": [{"eventSource": "aws:s3", "s3": {}}]}, "lacks s3.bucket.name or s3.object.key"),
])
def test_malformed_notifications_are_400(stack, body, fragment):
    answer = notify(stack, body)
    assert answer.status_code == 400 and fragment in answer.json()["error"]


def test_unsafe_keys_tokens_limits_and_foreign_buckets(stack, monkeypatch):
    for key in ("datasets/fm/../../etc/passwd", "datasets/fm/a/../../b"):
        answer = notify(stack, {"Records": [record(stack.bucket, key)]})
        assert answer.status_code == 400 and "is not a safe relative path" in answer.json()["error"]
    foreign = notify(stack, {"Records": [record("someone-else", "datasets/fm/x")]})
    assert foreign.status_code == 200 and foreign.json()["status"].startswith("ignored")
    outside = notify(stack, {"Records": [record(stack.bucket, "other/x")]})
    assert outside.status_code == 200
    missing = notify(stack, {"Records": []}, token=None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = notify(stack, {"Records": []}, token="guess")
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'  # RFC 6750
    big = notify(stack, None, raw=b"{" + b" " * (64 * 1024))
    assert big.status_code == 413 and "exceeds the limit of 65536" in big.json()["error"]
    assert notify(stack, None, raw=b"{not json").status_code == 400
    time.sleep(0.2)
    assert stack.received == [] and stack.jobs.delivered == 0


def test_bucket_uris_are_checked():
    assert BucketSource.parse("s3://b/p").prefix == "p/"
    assert BucketSource.parse("s3://b").prefix == ""
    for bad in ("http://b/p", "s3:///p", "b/p"):
        with pytest.raises(ValueError, match="expected s3://BUCKET"):
            BucketSource.parse(bad)


def test_retrain_watch_s3_catches_up_on_start_and_polls(tmp_path, r, redis_handle, s3, s3_endpoint):
    import os
    import subprocess
    import sys

    client, bucket = s3
    local = upload_dataset(client, bucket, tmp_path, train=40, test=10)
    received = []
    receiver = BackgroundServer(create_trigger(Deduplicator(r, 600, "cli-s3"), received.append),
                                bind("127.0.0.1", 0, "receiver"), "receiver").start()
    port = free_port()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url}
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "watch", "--s3", f"s3://{bucket}/datasets/fm",
                             "--s3-endpoint", s3_endpoint, "--s3-poll", "0.3", "--sink",
                             receiver.url + "/events", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: received, seconds=60)
        assert received[0].data.digest == fingerprint(local).digest
        assert received[0].data.trigger == "s3"
        newer = upload_dataset(client, bucket, tmp_path, train=50, test=10, seed=11)
        wait_for(lambda: len(received) == 2, seconds=60)  # noticed by polling alone
        assert received[1].data.digest == fingerprint(newer).digest
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        receiver.stop()
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize(("bucket", "key"), [(5, "p/a.png"), ("b", ["p/a.png"])])
def test_a_notification_whose_bucket_or_key_is_not_a_string_is_refused(bucket, key):
    from services.ingest_watcher.s3 import relevant_records

    body = {"Records": [{"eventSource": "minio:s3",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}
    with pytest.raises(ValueError, match="bucket name and object key must be strings"):
        relevant_records(body, BucketSource.parse("s3://b/p"))


def test_a_notification_of_many_objects_names_the_first_hundred_and_counts_them_all():
    from services.ingest_watcher.s3 import notified_origin, relevant_records

    source = BucketSource.parse("s3://b/p")
    body = {"Records": [record("b", f"p/increments/b1/sneaker/{n:04d}.png", "minio:s3",
                               size=300 + n, etag=f'"e{n}"') for n in range(250)]}
    trigger, objects = relevant_records(body, source)
    origin = notified_origin(source, objects)
    assert trigger == "minio" and origin.objects_total == 250 and len(origin.objects) == 100
    assert origin.objects[0] == SourceObject(key="p/increments/b1/sneaker/0000.png", etag="e0",
                                             size=300)
