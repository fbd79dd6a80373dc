"""``retrain step fetch``: what Argo Events' Git and bucket sources notified, brought onto the
shared volume for real (a bare Git repository over file://, the S3-compatible test server),
each revision in a folder of its own, a redelivery fetching nothing, two deliveries at once
never writing one folder, and the event it gives checked as the plan step checks it."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.backoff import Backoff
from events.payloads import RunParameters
from tests.conftest import write_dataset
from tests.services.ingest_watcher.test_git import Upstream, gitlab_push
from tests.services.ingest_watcher.test_s3 import record, s3, s3_endpoint, upload_dataset  # noqa: F401
from workflows import cluster_run
from workflows.fetch import FetchError, FetchSpecError, fetch, parse_spec, tag
from workflows.plan import data_uri_problem

pytestmark = pytest.mark.integration


def _retrain(*args, env=None):
    return subprocess.run([sys.executable, "-m", "retrain.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def upstream(tmp_path):
    return Upstream.with_dataset(tmp_path)


def git_spec(upstream, push, delivery="d-1", provider="github", path="data/fm"):
    """The spec the GitHub Sensor builds from a push (its dataTemplate, read as JSON)."""
    return {"kind": "git", "provider": provider, "repository": upstream.bare.as_uri(),
            "commit": push["after"], "ref": push["ref"], "path": path, "delivery": delivery,
            "pusher": push["pusher"]["name"]}


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_with_nothing_to_fetch_the_data_uri_and_event_pass_on(tmp_path):
    event = json.dumps({"specversion": "1.0", "id": "x", "source": "s", "type": "t"})
    done = _retrain("step", "fetch", "--fetch", "", "--data-uri", "/var/lib/retrain/data/fm",
                    "--event", event, "--outputs", str(tmp_path / "out"),
                    env={"RETRAIN_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "data-uri").read_text() == "/var/lib/retrain/data/fm"
    assert (tmp_path / "out" / "event").read_text() == event
    assert not (tmp_path / "home").exists()


def test_a_bad_spec_names_every_problem_exits_2_and_writes_nothing(tmp_path):
    spec = {"kind": "git", "provider": "bitbucket", "repository": "--upload-pack=evil",
            "commit": "HEAD", "ref": "main", "path": "../etc", "delivery": "", "extra": 1}
    done = _retrain("step", "fetch", "--fetch", json.dumps(spec), "--outputs",
                    str(tmp_path / "out"), env={"RETRAIN_HOME": str(tmp_path / "home")})
    assert done.returncode == 2
    for problem in ("unknown field 'extra'", "provider is 'bitbucket'", "delivery must be",
                    "repository must be a clone URL", "commit must be a full hexadecimal",
                    "ref must be a branch", "path must be a relative folder"):
        assert problem in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize(("spec", "problem"), [
    ("[1]", "must be a JSON object"), ("{", "not JSON"),
    ('{"kind": "svn"}', "kind is 'svn'"),
    ('{"kind": "s3", "provider": "minio", "bucket": "A_B", "prefix": "/x", "delivery": "r"}',
     "bucket must be a bucket name"),
    (('{"kind": "s3", "provider": "s3", "bucket": "data", "delivery": "r", '
      '"notification": {"Records": [{"eventSource": "gcs"}]}}'), "notification: Records[0]"),
])
def test_bad_specs_are_refused(spec, problem):
    with pytest.raises(FetchSpecError, match="bad fetch spec") as caught:
        parse_spec(spec)
    assert any(problem in p for p in caught.value.problems)


def test_a_push_brings_exactly_its_commit_into_a_folder_of_its_own(tmp_path, upstream):
    first = upstream.push("first")
    first_files = files(upstream.work / "data" / "fm")
    write_dataset(upstream.work / "data" / "fm", train=70, test=20, seed=9)
    second = upstream.push("second")  # the branch moved on: the first delivery still gets its own
    home = tmp_path / "home"
    out = tmp_path / "out"
    done = _retrain("step", "fetch", "--fetch", json.dumps(git_spec(upstream, first)),
                    "--outputs", str(out), env={"RETRAIN_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    root = home / "git" / tag(upstream.bare.as_uri())
    data_uri = (out / "data-uri").read_text()
    assert data_uri == str(root / first["after"] / "data" / "fm")
    assert files(root / first["after"] / "data" / "fm") == first_files
    assert not (root / first["after"] / ".git").exists()  # a snapshot, not a clone
    later = fetch(parse_spec(json.dumps(git_spec(upstream, second, "d-2"))), home)
    assert later.data_uri == str(root / second["after"] / "data" / "fm")
    assert sorted(p.name for p in root.iterdir()) == sorted([first["after"], second["after"]])
    assert files(root / first["after"] / "data" / "fm") == first_files  # untouched


def test_the_event_is_what_the_watcher_sends_and_passes_the_plans_check(tmp_path, upstream):
    push = upstream.push("first")
    home = tmp_path / "home"
    out = tmp_path / "out"
    done = _retrain("step", "fetch", "--fetch", json.dumps(git_spec(upstream, push, "g-77")),
                    "--outputs", str(out), env={"RETRAIN_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    data_uri = (out / "data-uri").read_text()
    event = json.loads((out / "event").read_text())
    assert event["type"] == "dev.retrain.dataset.updated" and event["id"] == "g-77"
    assert event["source"] == "retrain/fetch/github"
    assert event["data"]["uri"] == data_uri and event["data"]["trigger"] == "github"
    assert event["data"]["origin"] == {
        "kind": "git", "repository": upstream.bare.as_uri(), "ref": "refs/heads/main",
        "commit": push["after"], "pusher": "octocat", "delivery": "g-77", "bucket": None,
        "objects": [], "objects_total": None, "folder": None}
    assert data_uri_problem(data_uri, str(home.resolve())) is None
    request = cluster_run.request_of("retrain-x", data_uri, RunParameters(),
                                     (out / "event").read_text())
    assert request.trigger == "dataset.updated/github"
    assert request.source == f"git:{upstream.bare.as_uri()}#main"  # pushes of a branch coalesce
    assert request.event["origin"]["commit"] == push["after"]


def test_a_gitlab_push_says_who_pushed_it(tmp_path, upstream):
    push = gitlab_push(upstream.push("first"))
    spec = {"kind": "git", "provider": "gitlab", "repository": upstream.bare.as_uri(),
            "commit": push["checkout_sha"], "ref": push["ref"], "path": "data/fm",
            "delivery": "uuid-1", "pusher": push["user_username"]}
    fetched = fetch(parse_spec(json.dumps(spec)), tmp_path)
    assert fetched.event.source == "retrain/fetch/gitlab"
    assert fetched.event.data.origin.pusher == "jdoe"


def test_a_redelivery_fetches_nothing_and_gives_the_same_folder(tmp_path, upstream):
    push = upstream.push("first")
    spec = parse_spec(json.dumps(git_spec(upstream, push)))
    first = fetch(spec, tmp_path)
    root = tmp_path / "git" / tag(upstream.bare.as_uri())
    stamp = (root / push["after"]).stat().st_mtime_ns
    again = fetch(spec, tmp_path)
    assert first.fetched and not again.fetched
    assert again.data_uri == first.data_uri and again.event.id == first.event.id
    assert [p.name for p in root.iterdir()] == [push["after"]]
    assert (root / push["after"]).stat().st_mtime_ns == stamp


def test_two_deliveries_at_once_never_write_one_folder(tmp_path, upstream):
    push = upstream.push("first")
    specs = [parse_spec(json.dumps(git_spec(upstream, push, f"d-{n}"))) for n in range(4)]
    start, results = threading.Barrier(len(specs)), {}

    def deliver(spec):
        start.wait()
        results[spec.delivery] = fetch(spec, tmp_path)

    threads = [threading.Thread(target=deliver, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    root = tmp_path / "git" / tag(upstream.bare.as_uri())
    assert [p.name for p in root.iterdir()] == [push["after"]]  # no .part left behind
    assert {r.data_uri for r in results.values()} == {str(root / push["after"] / "data" / "fm")}
    assert sum(r.fetched for r in results.values()) == 1  # one placed it; the others found it
    assert files(root / push["after"] / "data" / "fm") == files(upstream.work / "data" / "fm")


def test_a_failed_fetch_leaves_nothing_in_place(tmp_path, upstream):
    push = upstream.push("first")
    gone = dict(git_spec(upstream, push), commit="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(FetchError, match="is not in .*force-pushed away") as caught:
        fetch(parse_spec(json.dumps(gone)), tmp_path)
    assert caught.value.exit_code == 1
    with pytest.raises(FetchError, match="has no folder data/other"):
        fetch(parse_spec(json.dumps(git_spec(upstream, push, path="data/other"))), tmp_path)
    root = tmp_path / "git" / tag(upstream.bare.as_uri())
    assert list(root.iterdir()) == []  # neither a revision nor a .part


def bucket_spec(bucket, keys=(), delivery="req-1", provider="minio"):
    """The spec the MinIO (or SQS) Sensor builds: the notification's records as they came."""
    source = "minio:s3" if provider == "minio" else "aws:s3"
    return json.dumps({"kind": "s3", "provider": provider, "bucket": bucket,
                       "prefix": "datasets/fm/", "delivery": delivery,
                       "notification": {"Records": [record(bucket, k, source) for k in keys]}})


def test_a_bucket_prefix_is_fetched_as_a_revision_of_its_own(tmp_path, s3, s3_endpoint):  # noqa: F811
    client, bucket = s3
    local = upload_dataset(client, bucket, tmp_path, train=60, test=20)
    keys = ["datasets/fm/" + p.name for p in sorted(local.iterdir())]
    home, out = tmp_path / "home", tmp_path / "out"
    done = _retrain("step", "fetch", "--fetch", bucket_spec(bucket, keys), "--outputs", str(out),
                    env={"RETRAIN_HOME": str(home), "RETRAIN_S3_ENDPOINT": s3_endpoint})
    assert done.returncode == 0, done.stderr
    data_uri = (out / "data-uri").read_text()
    root = home / "s3" / tag(f"s3://{bucket}/datasets/fm/")
    [revision] = [p for p in root.iterdir()]
    assert data_uri == str(revision / "data")
    assert files(revision / "data") == files(local)
    event = json.loads((out / "event").read_text())
    assert event["id"] == "req-1" and event["source"] == "retrain/fetch/minio"
    origin = event["data"]["origin"]
    assert origin["kind"] == "bucket" and origin["bucket"] == bucket
    assert [o["key"] for o in origin["objects"]] == keys and origin["delivery"] == "req-1"
    request = cluster_run.request_of("retrain-y", data_uri, RunParameters(),
                                     (out / "event").read_text())
    assert request.trigger == "dataset.updated/minio"


def test_a_changed_bucket_is_a_new_revision_and_a_redelivery_fetches_nothing(tmp_path, s3):  # noqa: F811
    client, bucket = s3
    upload_dataset(client, bucket, tmp_path, train=60, test=20)
    make = lambda: client
    first = fetch(parse_spec(bucket_spec(bucket, provider="s3")), tmp_path / "home", s3_client=make)
    again = fetch(parse_spec(bucket_spec(bucket, provider="s3")), tmp_path / "home", s3_client=make)
    assert first.fetched and not again.fetched and again.data_uri == first.data_uri
    before = files(tmp_path / "home")
    assert len(first.event.data.origin.objects) == 4  # no records named: what was mirrored
    client.put_object(Bucket=bucket, Key="datasets/fm/extra.txt", Body=b"more")
    changed = fetch(parse_spec(bucket_spec(bucket, ["datasets/fm/extra.txt"], "req-2")),
                    tmp_path / "home", s3_client=make)
    assert changed.fetched and changed.data_uri != first.data_uri
    assert [o.key for o in changed.event.data.origin.objects] == ["datasets/fm/extra.txt"]
    after = files(tmp_path / "home")
    assert {k: v for k, v in after.items() if k in before} == before  # the first kept as it was


def test_two_bucket_deliveries_at_once_place_one_revision(tmp_path, s3):  # noqa: F811
    client, bucket = s3
    upload_dataset(client, bucket, tmp_path, train=60, test=20)
    start, results = threading.Barrier(3), []

    def deliver(n):
        start.wait()
        results.append(fetch(parse_spec(bucket_spec(bucket, delivery=f"r-{n}")),
                             tmp_path / "home", s3_client=lambda: client))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    root = tmp_path / "home" / "s3" / tag(f"s3://{bucket}/datasets/fm/")
    assert len({r.data_uri for r in results}) == 1 and len(results) == 3
    assert len(list(root.iterdir())) == 1  # one revision, no .part left behind
    assert sum(r.fetched for r in results) == 1


def test_an_empty_prefix_is_an_error(tmp_path, s3):  # noqa: F811
    client, bucket = s3
    with pytest.raises(FetchError, match="holds no objects"):
        fetch(parse_spec(bucket_spec(bucket)), tmp_path, s3_client=lambda: client)
    assert not (tmp_path / "s3").exists() or list((tmp_path / "s3").rglob("*")) == []


def test_a_killed_fetchs_leftovers_are_swept_and_never_read(tmp_path, upstream):
    push = upstream.push("first")
    root = tmp_path / "git" / tag(upstream.bare.as_uri())
    old, recent = root / f".{push['after']}.dead0001.part", root / f".{push['after']}.live0002.part"
    for folder in (old, recent):
        (folder / "data" / "fm").mkdir(parents=True)
    os.utime(old, (1, 1))  # left by a fetch killed long ago
    fetched = fetch(parse_spec(json.dumps(git_spec(upstream, push))), tmp_path)
    assert not old.exists() and recent.exists()  # one running now keeps its folder
    assert fetched.data_uri == str(root / push["after"] / "data" / "fm")
    assert data_uri_problem(str(recent / "data" / "fm"), str(tmp_path)) is not None  # hidden


def test_only_the_configured_repositories_are_fetched(tmp_path, upstream):
    """Whoever may submit the workflow cannot have the Git token sent to a repository of
    their choosing (RETRAIN_FETCH_REPOSITORIES)."""
    spec = json.dumps(git_spec(upstream, upstream.push("first")))
    assert parse_spec(spec, (upstream.bare.as_uri(),)).repository == upstream.bare.as_uri()
    done = _retrain("step", "fetch", "--fetch", spec, "--outputs", str(tmp_path / "out"),
                    env={"RETRAIN_HOME": str(tmp_path / "home"),
                         "RETRAIN_FETCH_REPOSITORIES": "https://github.com/retrain-dev/data.git"})
    assert done.returncode == 2 and "is not one this workflow fetches" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()


# -- a source that cannot be reached for a while ------------------------------------------------

class Outage:
    """The waits a fetch makes between attempts, recorded; the source comes back after
    ``failures`` failed attempts (``restore`` called at that wait) or never."""

    def __init__(self, failures=None, restore=lambda: None):
        self.waits, self.failures, self.restore = [], failures, restore

    def __call__(self, seconds):
        self.waits.append(seconds)
        if len(self.waits) == self.failures:
            self.restore()


def test_a_git_server_failing_twice_then_answering_is_fetched_on_the_third_attempt(
        tmp_path, upstream, caplog):
    """The repository unreachable for two attempts (moved away: git's fetch fails as for a
    server down), then back: the push is fetched, not lost; the log says each failure."""
    push = upstream.push("first")
    spec = parse_spec(json.dumps(git_spec(upstream, push)))
    away = upstream.bare.with_name("away.git")
    upstream.bare.rename(away)
    outage = Outage(failures=2, restore=lambda: away.rename(upstream.bare))
    with caplog.at_level("WARNING", logger="workflows.fetch"):
        fetched = fetch(spec, tmp_path / "home", attempts=4,
                        backoff=Backoff(2.0, 16.0, sleep=outage))
    assert outage.waits == [2.0, 4.0]  # bounded backoff, two waits, the third attempt worked
    assert fetched.fetched and fetched.data_uri.endswith(f"/{push['after']}/data/fm")
    assert files(upstream.work / "data" / "fm") == files(Path(fetched.data_uri))
    assert "could not be reached (attempt 1 of 4)" in caplog.text
    root = tmp_path / "home" / "git" / tag(upstream.bare.as_uri())
    assert [p.name for p in root.iterdir()] == [push["after"]]  # the failed attempts left nothing


def test_a_source_that_never_answers_is_unavailable_after_bounded_attempts(tmp_path, upstream):
    from workflows.fetch import FetchUnavailable

    push = upstream.push("first")
    spec = parse_spec(json.dumps(git_spec(upstream, push)))
    upstream.bare.rename(upstream.bare.with_name("gone.git"))
    outage = Outage()
    with pytest.raises(FetchUnavailable, match="could not be reached in 3 attempts") as caught:
        fetch(spec, tmp_path / "home", attempts=3, backoff=Backoff(1.0, 16.0, sleep=outage))
    assert outage.waits == [1.0, 2.0] and caught.value.exit_code == 75
    assert not list((tmp_path / "home").rglob("*.part"))


def test_a_commit_that_is_not_there_is_final_and_not_retried(tmp_path, upstream):
    push = upstream.push("first")
    gone = dict(git_spec(upstream, push), commit="0123456789abcdef0123456789abcdef01234567")
    outage = Outage()
    with pytest.raises(FetchError) as caught:
        fetch(parse_spec(json.dumps(gone)), tmp_path, backoff=Backoff(1.0, 1.0, sleep=outage))
    assert caught.value.exit_code == 1 and outage.waits == []


def test_a_bucket_endpoint_down_then_up_is_fetched(tmp_path, s3):  # noqa: F811
    """The first two attempts reach an endpoint where nothing listens (connection refused:
    S3 or MinIO down), the third the real server."""
    import boto3
    from botocore.config import Config

    from tests.conftest import free_port

    client, bucket = s3
    upload_dataset(client, bucket, tmp_path, train=30, test=10)
    down = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    clients = [down, down, client]
    outage = Outage()
    fetched = fetch(parse_spec(bucket_spec(bucket)), tmp_path / "home",
                    s3_client=lambda: clients.pop(0), attempts=4,
                    backoff=Backoff(1.0, 1.0, sleep=outage))
    assert outage.waits == [1.0, 1.0] and fetched.fetched
    assert len(list(Path(fetched.data_uri).iterdir())) == 4


def test_a_bucket_that_does_not_exist_is_final(tmp_path, s3):  # noqa: F811
    client, _ = s3
    outage = Outage()
    with pytest.raises(FetchError, match="NoSuchBucket") as caught:
        fetch(parse_spec(bucket_spec("no-such-bucket-here")), tmp_path, s3_client=lambda: client,
              backoff=Backoff(1.0, 1.0, sleep=outage))
    assert caught.value.exit_code == 1 and outage.waits == []
