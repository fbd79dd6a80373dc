"""The watcher, composed: one entry that ``retrain watch``, the local stack and the container
all call.

``source_from_options`` turns the command line's choice (a folder, a Git repository or a
bucket prefix) into a ``Source``; ``watching`` starts what that source needs around a
``DirectoryWatcher`` (outboxes, fetchers, mirrors, pollers, threads) and stops it all on
exit; ``run`` serves the watcher's HTTP endpoints in the foreground until stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from core.errors import ConfigurationError
from core.http import serve_forever
from core.redact import redact
from core.redis_store import open_redis
from core.settings import Settings
from dataset.errors import DatasetNotFoundError
from dataset.layout import resolve_root
from events import make_event
from events.outbox import Outbox
from events.sinks import HttpSink, Sink
from services.ingest_watcher.app import BucketWebhooks, GitWebhooks, create_app
from services.ingest_watcher.fetch import SourceFetcher
from services.ingest_watcher.watcher import DirectoryWatcher

DEFAULT_PORT = 8081
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderSource:
    path: Path  # watched as it is: the local stack watches a folder that appears later


@dataclass(frozen=True)
class GitRepoSource:
    url: str
    branch: str = "main"
    path: str = "."


@dataclass(frozen=True)
class BucketPrefixSource:
    uri: str  # s3://BUCKET/PREFIX
    endpoint: str | None = None
    poll_seconds: float = 60.0


Source = FolderSource | GitRepoSource | BucketPrefixSource


def source_from_options(data: str | None, git: str | None, s3: str | None, *,
                        git_branch: str = "main", git_path: str = ".",
                        s3_endpoint: str | None = None, s3_poll: float = 60.0) -> Source:
    """The one source the options name; exactly one of ``data``, ``git`` and ``s3``."""
    if sum(x is not None for x in (data, git, s3)) != 1:
        raise ConfigurationError("give exactly one of --data DIR, --git URL and --s3 s3://BUCKET/PREFIX")
    if git is not None:
        return GitRepoSource(git, git_branch, git_path)
    if s3 is not None:
        return BucketPrefixSource(s3, s3_endpoint, s3_poll)
    assert data is not None
    try:
        return FolderSource(resolve_root(data))
    except DatasetNotFoundError:  # a fresh install: the watcher waits for the folder (and
        # is ready, /healthz, once it is there)
        return FolderSource(Path(data.removeprefix("file://")).expanduser().resolve())


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Watching:
    """What ``watching`` started: the watcher and the webhook handlers its source needs."""

    watcher: DirectoryWatcher
    git_hooks: GitWebhooks | None = None
    bucket_hooks: BucketWebhooks | None = None
    _threads: list[threading.Thread] = field(default_factory=list)


@contextlib.contextmanager
def watching(settings: Settings, client: redis.Redis, source: Source, sink: Sink, *,
             outbox_name: str = "watcher", max_backoff: float | None = None,
             stop: threading.Event | None = None) -> Iterator[Watching]:
    """Start watching ``source``: changes become ``dataset.updated`` events sent to ``sink``
    through a durable outbox in Redis (a sink outage delays events, never loses them). A
    folder is watched on a thread; a Git repository is fetched on each push webhook; a
    bucket prefix is mirrored on each notification and polled."""
    stop = stop or threading.Event()
    with contextlib.ExitStack() as exit_stack:
        mirror = clone = None
        if isinstance(source, GitRepoSource):
            from services.ingest_watcher.git import Clone, GitSource

            try:
                git_source = GitSource(source.url, source.branch, source.path)
            except ValueError as exc:
                raise ConfigurationError(f"--git-path: {exc}") from None
            tag = _tag(f"{source.url}#{source.branch}")
            clone = Clone(git_source, settings.home / "git" / tag, settings.git_credential)
            root = clone.dataset_root
        elif isinstance(source, BucketPrefixSource):
            import boto3

            from services.ingest_watcher.s3 import BucketMirror, BucketSource

            try:
                bucket = BucketSource.parse(source.uri, source.endpoint)
            except ValueError as exc:
                raise ConfigurationError(f"--s3: {exc}") from None
            tag = _tag(bucket.uri)
            mirror = BucketMirror(boto3.client("s3", endpoint_url=source.endpoint), bucket,
                                  settings.home / "s3" / tag / "data", settings.watch_settle)
            root = mirror.folder
        else:
            root = source.path

        outbox_options = {} if max_backoff is None else {"max_backoff": max_backoff}
        outbox = Outbox(client, sink, f"{outbox_name}:{_tag(str(root.resolve()))}",
                        **outbox_options).start()
        exit_stack.callback(outbox.stop)
        watcher = DirectoryWatcher(root, outbox, client, settings.home / "watcher",
                                   interval=settings.watch_interval, settle=settings.watch_settle)
        watching_ = Watching(watcher)
        if mirror is not None:
            from services.ingest_watcher.s3 import Poller

            jobs = Outbox(client, SourceFetcher(mirror.sync, watcher), f"s3:{tag}").start()
            exit_stack.callback(jobs.stop)
            bucket_uri = mirror.source.uri

            def request_sync(trigger: str = "s3") -> None:
                jobs.put(make_event("dataset.updated", {"uri": bucket_uri, "trigger": trigger},
                                    source="retrain/watcher/poll"))

            request_sync()  # catch up with the bucket on start
            watching_.bucket_hooks = BucketWebhooks(mirror.source, jobs, settings.s3_webhook_token)
            assert isinstance(source, BucketPrefixSource)
            if source.poll_seconds > 0:
                watching_._threads.append(threading.Thread(
                    target=Poller(mirror, request_sync, source.poll_seconds).run, args=(stop,),
                    name="bucket-poller", daemon=True))
        elif clone is not None:
            assert isinstance(source, GitRepoSource)
            jobs = Outbox(client, SourceFetcher(clone.sync, watcher), f"git:{tag}").start()
            exit_stack.callback(jobs.stop)
            # catch up with the branch (the job names the repository; a token in its URL is
            # masked: the fetch uses the watcher's own source, never the job's text)
            jobs.put(make_event("dataset.updated", {"uri": redact(source.url), "trigger": "github"},
                                source="retrain/watcher/start"))
            watching_.git_hooks = GitWebhooks(clone.source, jobs, settings.github_webhook_secret,
                                              settings.gitlab_webhook_token)
        else:
            watching_._threads.append(threading.Thread(target=watcher.run, args=(stop,),
                                                       name="watcher", daemon=True))
        for thread in watching_._threads:
            thread.start()
        try:
            yield watching_
        finally:
            stop.set()
            for thread in watching_._threads:
                thread.join(timeout=10)


def run(settings: Settings, source: Source, *, sink_url: str | None = None,
        port: int = DEFAULT_PORT, structured: bool = False) -> None:
    """``retrain watch``: watch ``source`` and serve ``/healthz``, ``/metrics``,
    ``POST /rescan`` and the webhooks on ``port`` until stopped."""
    sink = HttpSink(sink_url or settings.events_url, attempts=1,
                    mode="structured" if structured else "binary", api_key=settings.api_key)
    with open_redis(settings.redis_url, settings.home) as handle, \
            watching(settings, handle.client, source, sink) as watched:
        serve_forever(create_app(watched.watcher, settings.api_keys, watched.git_hooks,
                                 watched.bucket_hooks),
                      settings.host, port, "watcher")
