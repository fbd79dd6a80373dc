"""The watcher, composed: one entry that ``retrain watch``, the local stack and the container
all call.

``source_from_options`` turns the command line's choice (a folder, a Git repository or a
bucket prefix) into a ``Source``; ``watching`` starts what that source needs around a
``DirectoryWatcher`` (outboxes, fetchers, mirrors, pollers, threads) and stops it all on
exit; ``run`` serves the watcher's HTTP endpoints in the foreground until stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterator
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
from services.ingest_watcher.app import create_app
from services.ingest_watcher.fetch import SourceFetcher
from services.ingest_watcher.watcher import DirectoryWatcher
from services.ingest_watcher.webhooks import BucketWebhooks, GitWebhooks

DEFAULT_PORT = 8081


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
    with contextlib.ExitStack() as exits:
        watcher_of = functools.partial(_directory_watcher, settings, client, sink, exits,
                                       outbox_name=outbox_name, max_backoff=max_backoff)
        if isinstance(source, GitRepoSource):
            watched = _follow_git(settings, client, source, watcher_of, exits)
        elif isinstance(source, BucketPrefixSource):
            watched = _follow_bucket(settings, client, source, watcher_of, exits, stop)
        else:
            watched = Watching(watcher_of(source.path))
            watched._threads.append(threading.Thread(target=watched.watcher.run, args=(stop,),
                                                     name="watcher", daemon=True))
        with _running(watched._threads, stop):
            yield watched


def _directory_watcher(settings: Settings, client: redis.Redis, sink: Sink,
                       exits: contextlib.ExitStack, root: Path, *, outbox_name: str,
                       max_backoff: float | None) -> DirectoryWatcher:
    """The watcher of ``root``, sending through its own outbox (started; stopped on exit)."""
    options = {} if max_backoff is None else {"max_backoff": max_backoff}
    outbox = Outbox(client, sink, f"{outbox_name}:{_tag(str(root.resolve()))}",
                    **options).start()
    exits.callback(outbox.stop)
    return DirectoryWatcher(root, outbox, client, settings.home / "watcher",
                            interval=settings.watch_interval, settle=settings.watch_settle)


def _follow_git(settings: Settings, client: redis.Redis, source: GitRepoSource,
                watcher_of: Callable[[Path], DirectoryWatcher],
                exits: contextlib.ExitStack) -> Watching:
    """A clone of the branch, fetched on each push webhook (and once now, to catch up)."""
    from services.ingest_watcher.git import Clone, GitSource

    try:
        git_source = GitSource(source.url, source.branch, source.path)
    except ValueError as exc:
        raise ConfigurationError(f"--git-path: {exc}") from None
    tag = _tag(f"{source.url}#{source.branch}")
    clone = Clone(git_source, settings.home / "git" / tag, settings.git_credential)
    watcher = watcher_of(clone.dataset_root)
    jobs = Outbox(client, SourceFetcher(clone.sync, watcher, origin=clone.origin),
                  f"git:{tag}").start()
    exits.callback(jobs.stop)
    # catch up with the branch (the job names the repository; a token in its URL is masked:
    # the fetch uses the watcher's own source, never the job's text)
    jobs.put(make_event("dataset.updated", {"uri": redact(source.url), "trigger": "github"},
                        source="retrain/watcher/start"))
    return Watching(watcher, git_hooks=GitWebhooks(clone.source, jobs,
                                                   settings.github_webhook_secret,
                                                   settings.gitlab_webhook_token))


def _follow_bucket(settings: Settings, client: redis.Redis, source: BucketPrefixSource,
                   watcher_of: Callable[[Path], DirectoryWatcher], exits: contextlib.ExitStack,
                   stop: threading.Event) -> Watching:
    """A mirror of the prefix, synced on each notification, on each poll that sees a
    difference, and once now (to catch up)."""
    import boto3

    from services.ingest_watcher.s3 import BucketMirror, BucketSource, Poller

    try:
        bucket = BucketSource.parse(source.uri, source.endpoint)
    except ValueError as exc:
        raise ConfigurationError(f"--s3: {exc}") from None
    mirror = BucketMirror(boto3.client("s3", endpoint_url=source.endpoint), bucket,
                          settings.home / "s3" / _tag(bucket.uri) / "data", settings.watch_settle)
    watcher = watcher_of(mirror.folder)
    jobs = Outbox(client, SourceFetcher(mirror.sync, watcher, origin=mirror.origin),
                  f"s3:{_tag(bucket.uri)}").start()
    exits.callback(jobs.stop)

    def request_sync(trigger: str = "s3") -> None:
        jobs.put(make_event("dataset.updated", {"uri": bucket.uri, "trigger": trigger},
                            source="retrain/watcher/poll"))

    request_sync()  # catch up with the bucket on start
    watched = Watching(watcher, bucket_hooks=BucketWebhooks(mirror.source, jobs,
                                                            settings.s3_webhook_token))
    if source.poll_seconds > 0:
        poller = Poller(mirror, request_sync, source.poll_seconds)
        watched._threads.append(threading.Thread(target=poller.run, args=(stop,),
                                                 name="bucket-poller", daemon=True))
    return watched


@contextlib.contextmanager
def _running(threads: list[threading.Thread], stop: threading.Event) -> Iterator[None]:
    """``threads`` running until the block ends, then stopped (``stop``) and joined."""
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
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
