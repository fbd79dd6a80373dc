"""Git push webhooks end to end: real git repositories, the watcher's app on a real socket,
the fetch through the durable outbox, and a real receiver (the trigger app) for the events."""

import hashlib
import hmac
import json
import subprocess
import time
import uuid

import httpx
import pytest

from core.http import BackgroundServer, bind
from dataset.fingerprint import fingerprint
from events.dedup import Deduplicator
from events.outbox import Outbox
from events.payloads import Origin
from events.sinks import HttpSink
from services.ingest_watcher import webhooks
from services.ingest_watcher.app import create_app
from services.ingest_watcher.fetch import SourceFetcher
from services.ingest_watcher.git import Clone, GitError, GitSource, push_origin
from services.ingest_watcher.watcher import DirectoryWatcher
from services.ingest_watcher.webhooks import GitWebhooks
from tests.conftest import free_port, wait_for, write_dataset
from workflows.trigger import create_app as create_trigger

pytestmark = pytest.mark.integration
SECRET, TOKEN = "s3cret", "gl-token"


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class Upstream:
    """A bare repository (the remote) and a working copy that pushes to it."""

    def __init__(self, base):
        self.bare = base / "origin.git"
        self.work = base / "work"
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=base)
        git("clone", "-q", str(self.bare), str(self.work), cwd=base)
        for key, value in (("user.name", "t"), ("user.email", "t@example.com"), ("commit.gpgsign", "false")):
            git("config", key, value, cwd=self.work)
        git("checkout", "-q", "-b", "main", cwd=self.work)

    @classmethod
    def with_dataset(cls, base):
        """A working copy holding a small dataset under ``data/fm`` and a README, not pushed."""
        up = cls(base)
        write_dataset(up.work / "data" / "fm", train=60, test=20)
        (up.work / "README.md").write_text("hello\n")
        return up

    def push(self, message, branch="main"):
        """Commit everything and push; returns the push payload GitHub sends (its fields as
        GitHub's push event documents them; ``gitlab`` turns it into GitLab's Push Hook)."""
        before = git("rev-parse", "HEAD", cwd=self.work) if self._has_commits() else "0" * 40
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        after = git("rev-parse", "HEAD", cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        commits = []
        for sha in git("rev-list", "--reverse", after if before == "0" * 40 else f"{before}..{after}",
                       cwd=self.work).split():
            status = git("show", "--name-status", "--format=", sha, cwd=self.work)
            files = {"added": [], "modified": [], "removed": []}
            for line in status.splitlines():
                kind, path = line.split("\t", 1)
                files[{"A": "added", "M": "modified", "D": "removed"}[kind[0]]].append(path)
            commits.append({"id": sha, **files})
        return {"ref": f"refs/heads/{branch}", "before": before, "after": after,
                "repository": {"full_name": "octo-org/evil", "clone_url": "https://attacker.example/evil.git"},
                "pusher": {"name": "octocat", "email": "octocat@example.com"},
                "sender": {"login": "octocat"}, "head_commit": {"id": after}, "commits": commits}

    def _has_commits(self):
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.work, capture_output=True).returncode == 0


def gitlab_push(github_payload):
    """The same push as GitLab's Push Hook says it: ``checkout_sha``, ``user_username``,
    ``user_name`` and ``project`` instead of GitHub's ``pusher`` and ``repository``."""
    return {"object_kind": "push", "event_name": "push", "ref": github_payload["ref"],
            "before": github_payload["before"], "after": github_payload["after"],
            "checkout_sha": github_payload["after"], "user_name": "Jane Doe",
            "user_username": "jdoe", "project": {"path_with_namespace": "acme/data"},
            "commits": github_payload["commits"],
            "total_commits_count": len(github_payload["commits"])}


@pytest.fixture
def upstream(tmp_path):
    return Upstream.with_dataset(tmp_path)


@pytest.fixture
def stack(tmp_path, r, upstream):
    """Receiver ← outbox ← watcher ← fetcher ← git outbox ← webhook app."""
    received = []
    receiver = BackgroundServer(create_trigger(Deduplicator(r, 600, "git-test"), received.append),
                                bind("127.0.0.1", 0, "receiver"), "receiver").start()
    events = Outbox(r, HttpSink(receiver.url + "/events", attempts=1), "git-test-events",
                    first_backoff=0.05).start()
    source = GitSource(str(upstream.bare), "main", "data/fm")
    clone = Clone(source, tmp_path / "clone")
    watcher = DirectoryWatcher(clone.dataset_root, events, r, tmp_path / "state")
    jobs = Outbox(r, SourceFetcher(clone.sync, watcher, origin=clone.origin), "git-test-jobs",
                  first_backoff=0.05).start()
    app = create_app(watcher, (), GitWebhooks(source, jobs, SECRET, TOKEN))
    server = BackgroundServer(app, bind("127.0.0.1", 0, "watcher"), "watcher").start()

    class Stack:
        pass

    s = Stack()
    s.received, s.jobs, s.url, s.clone, s.source = received, jobs, server.url, clone, source
    yield s
    server.stop()
    jobs.stop()
    events.stop()
    receiver.stop()


def github(url, payload, event="push", delivery=None, secret=SECRET, body=None):
    body = body if body is not None else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(url + "/webhooks/github", content=body, headers=headers, timeout=30)


def test_a_push_to_the_dataset_emits_one_event_with_the_new_digest(stack, upstream):
    payload = upstream.push("dataset v1")
    answer = github(stack.url, payload, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert answer.status_code == 202 and answer.json()["commit"] == payload["after"]
    wait_for(lambda: stack.received)
    [event] = stack.received
    assert event.data.trigger == "github"
    # what the push said, kept with the change: the repository fetched (never the body's URL)
    assert event.data.origin == Origin(
        kind="git", repository=str(upstream.bare), ref="refs/heads/main",
        commit=payload["after"], pusher="octocat",
        delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert event.data.digest == fingerprint(upstream.work / "data" / "fm").digest
    assert "train-images-idx3-ubyte.gz" in event.data.files.added
    assert event.data.uri == str(stack.clone.dataset_root.resolve())
    # the URL in the body was not trusted: the clone's remote is the configured one
    assert (stack.clone.folder / "data" / "fm" / "train-labels-idx1-ubyte.gz").is_file()

    # a second change of the data: a new event, with what changed and the previous digest
    write_dataset(upstream.work / "data" / "fm", train=80, test=20, seed=9)
    second = upstream.push("dataset v2")
    assert github(stack.url, second).status_code == 202
    wait_for(lambda: len(stack.received) == 2)
    assert stack.received[1].data.previous_digest == event.data.digest
    assert "train-images-idx3-ubyte.gz" in stack.received[1].data.files.changed


def test_pushes_that_do_not_change_the_dataset_emit_nothing(stack, upstream):
    assert github(stack.url, upstream.push("v1")).status_code == 202
    wait_for(lambda: len(stack.received) == 1)
    fetched = stack.jobs.delivered
    (upstream.work / "README.md").write_text("docs only\n")
    answer = github(stack.url, upstream.push("docs"))
    assert answer.status_code == 200 and "no file under data/fm changed" in answer.json()["status"]
    # a change under the path that is undone in the same push: fetched, same digest, no event
    labels = upstream.work / "data" / "fm" / "extra.txt"
    labels.write_text("x")
    git("add", "-A", cwd=upstream.work)
    git("commit", "-q", "-m", "add", cwd=upstream.work)
    labels.unlink()
    payload = upstream.push("remove again")
    payload["commits"].insert(0, {"id": "x", "added": ["data/fm/extra.txt"], "modified": [], "removed": []})
    assert github(stack.url, payload).status_code == 202
    wait_for(lambda: stack.jobs.delivered == fetched + 1)
    time.sleep(0.3)
    assert len(stack.received) == 1
    assert github(stack.url, {**payload, "ref": "refs/heads/feature"}).json()["status"].startswith(
        "ignored: refs/heads/feature is not the watched branch")


def test_replays_signatures_and_malformed_bodies(stack, upstream, monkeypatch):
    payload = upstream.push("v1")
    delivery = str(uuid.uuid4())
    assert github(stack.url, payload, delivery=delivery).status_code == 202
    replay = github(stack.url, payload, delivery=delivery)
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate delivery"
    wait_for(lambda: stack.received)
    assert stack.jobs.delivered == 1

    missing = github(stack.url, payload, secret=None)
    assert missing.status_code == 401 and "X-Hub-Signature-256" in missing.json()["error"]
    assert github(stack.url, payload, secret="guess").status_code == 401
    tampered = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hmac.new(
        SECRET.encode(), tampered, hashlib.sha256).hexdigest()}
    assert httpx.post(stack.url + "/webhooks/github", content=tampered.replace(b"main", b"mair"),
                      headers=headers).status_code == 401
    assert github(stack.url, {}, event="ping").json() == {"status": "pong"}
    assert "only push" in github(stack.url, {}, event="issues").json()["status"]
    bad = github(stack.url, None, body=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert github(stack.url, None, body=b'["a list"]').status_code == 400
    monkeypatch.setattr(webhooks, "GITHUB_MAX_BODY", 1000)
    big = github(stack.url, None, body=b" " * 5000)
    assert big.status_code == 413 and "exceeds the limit of 1000" in big.json()["error"]
    time.sleep(0.3)
    assert len(stack.received) == 1 and stack.jobs.delivered == 1


def test_gitlab_push_hooks_need_the_token(stack, upstream):
    payload = gitlab_push(upstream.push("v1"))
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    wrong = httpx.post(stack.url + "/webhooks/gitlab", json=payload,
                       headers={**headers, "X-Gitlab-Token": "nope"})
    assert wrong.status_code == 401 and "X-Gitlab-Token" in wrong.json()["error"]
    ok = httpx.post(stack.url + "/webhooks/gitlab", json=payload, headers={**headers, "X-Gitlab-Token": TOKEN})
    assert ok.status_code == 202
    wait_for(lambda: stack.received)
    assert stack.received[0].data.trigger == "gitlab"
    origin = stack.received[0].data.origin
    assert (origin.kind, origin.commit, origin.pusher, origin.delivery) == (
        "git", payload["checkout_sha"], "jdoe", headers["X-Gitlab-Event-UUID"])


def test_many_deliveries_of_one_push_emit_one_event(stack, upstream):
    payload = upstream.push("v1")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # distinct deliveries (GitHub retries carry new ids)
        codes = list(pool.map(lambda _: github(stack.url, payload).status_code, range(40)))
    assert set(codes) == {202}
    wait_for(lambda: stack.jobs.pending() == 0)
    time.sleep(0.3)
    assert len(stack.received) == 1


def test_unconfigured_webhooks_and_unsafe_paths(tmp_path, r):
    with pytest.raises(ValueError, match="must be relative"):
        GitSource("x", path="../etc")
    with pytest.raises(ValueError, match="must be relative"):
        GitSource("x", path="/abs")
    watcher = DirectoryWatcher(tmp_path, Outbox(r, None, "unused"), r, tmp_path / "s")
    server = BackgroundServer(create_app(watcher), bind("127.0.0.1", 0, "w"), "w").start()
    try:
        answer = httpx.post(server.url + "/webhooks/github", json={})
        assert answer.status_code == 404 and "not configured" in answer.json()["error"]
    finally:
        server.stop()


def test_retrain_watch_git_catches_up_on_start_then_follows_webhooks(tmp_path, r, redis_handle, upstream):
    import os
    import sys

    upstream.push("v1")
    received = []
    receiver = BackgroundServer(create_trigger(Deduplicator(r, 600, "cli-git"), received.append),
                                bind("127.0.0.1", 0, "receiver"), "receiver").start()
    port = free_port()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url,
           "RETRAIN_GITHUB_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "watch", "--git", str(upstream.bare),
                             "--git-path", "data/fm", "--sink", receiver.url + "/events",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: received, seconds=60)  # the dataset already on the branch
        assert received[0].data.digest == fingerprint(upstream.work / "data" / "fm").digest
        head = git("rev-parse", "HEAD", cwd=upstream.work)
        assert received[0].data.origin == Origin(  # no push asked: the branch and its head
            kind="git", repository=str(upstream.bare), ref="refs/heads/main", commit=head)
        write_dataset(upstream.work / "data" / "fm", train=70, test=20, seed=5)
        payload = upstream.push("v2")
        wait_for(lambda: _up(port), seconds=30)
        assert github(f"http://127.0.0.1:{port}", payload).status_code == 202
        wait_for(lambda: len(received) == 2, seconds=60)
        assert received[1].data.trigger == "github"
        assert (received[1].data.origin.commit, received[1].data.origin.pusher) == (
            payload["after"], "octocat")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        receiver.stop()
    assert "Traceback" not in output, output[-3000:]


def _up(port):
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def test_a_private_repositorys_token_is_sent_as_a_header_and_never_shown(tmp_path):
    """Real git against a real HTTP server on 127.0.0.1 that records what it is sent: the
    token from the settings arrives as an Authorization header (not in the URL), and neither
    it nor a token written inside a URL appears in the error."""
    import base64
    import http.server
    import threading

    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/org/data.git"
        with pytest.raises(GitError) as info:
            Clone(GitSource(url), tmp_path / "clone", token="ghp_SettingsToken123").sync()
        assert "ghp_SettingsToken123" not in str(info.value)
        header = next(h for h in seen if h)
        assert base64.b64decode(header.removeprefix("Basic ")).decode().endswith(":ghp_SettingsToken123")
        assert "ghp_SettingsToken123" not in (tmp_path / "clone" / ".git" / "config").read_text()

        in_url = f"http://x:ghp_UrlToken4567@127.0.0.1:{server.server_port}/org/data.git"
        with pytest.raises(GitError) as info:
            Clone(GitSource(in_url), tmp_path / "clone2").sync()
        assert "ghp_UrlToken4567" not in str(info.value) and "x:***@127.0.0.1" in str(info.value)
    finally:
        server.shutdown()


# what a push payload says, as the providers send it ------------------------------------------
def test_a_github_push_names_its_pusher_commit_and_delivery():
    source = GitSource("https://x:tok3n@github.example/octo-org/data.git", "main", "data")
    payload = {"ref": "refs/heads/main", "after": "98248f0e892ce4e4e37411730ac98b53f2aa1261",
               "pusher": {"name": "nevik", "email": "nevik@example.com"},
               "sender": {"login": "nevik"}, "head_commit": {"id": "98248f0e"},
               "repository": {"full_name": "nevik/testrepo"}}
    origin = push_origin("github", payload, source, "ee3a5c6c")
    assert origin == Origin(kind="git", repository="https://x:***@github.example/octo-org/data.git",
                            ref="refs/heads/main", commit=payload["after"], pusher="nevik",
                            delivery="ee3a5c6c")
    no_pusher = push_origin("github", {**payload, "pusher": None}, source, None)
    assert no_pusher.pusher == "nevik" and no_pusher.delivery is None  # the sender's login


def test_a_gitlab_push_names_its_user_and_checkout_and_a_deleted_branch_no_commit():
    source = GitSource("https://gitlab.example/acme/data.git")
    payload = {"object_kind": "push", "ref": "refs/heads/main",
               "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
               "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
               "user_name": "John Smith", "user_username": "jsmith"}
    origin = push_origin("gitlab", payload, source, "4c4e1bd8")
    assert (origin.commit, origin.pusher, origin.delivery) == (payload["after"], "jsmith", "4c4e1bd8")
    deleted = push_origin("gitlab", {**payload, "after": "0" * 40, "checkout_sha": None},
                          source, None)
    assert deleted.commit is None and deleted.ref == "refs/heads/main"


def test_a_checkout_past_the_pushed_commit_names_the_checkout_and_no_pusher(tmp_path, upstream):
    first = upstream.push("v1")
    write_dataset(upstream.work / "data" / "fm", train=70, test=20, seed=4)
    second = upstream.push("v2")  # pushed before the first push's fetch ran
    clone = Clone(GitSource(str(upstream.bare), "main", "data/fm"), tmp_path / "clone")
    clone.sync()
    said = push_origin("github", first, clone.source, "d1")
    assert clone.origin(said).model_dump(include={"commit", "pusher", "delivery"}) == {
        "commit": second["after"], "pusher": None, "delivery": "d1"}
    assert clone.origin(push_origin("github", second, clone.source, "d2")).pusher == "octocat"
