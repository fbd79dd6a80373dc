"""The local stack: trigger, runner, selector, model server and watcher on this machine."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from core import timeline
from core.http import BackgroundServer, bind
from core.redis_store import RedisHandle, open_redis
from core.settings import MODEL_NAME, Settings
from events.dedup import Deduplicator
from events.payloads import RunParameters
from events.sinks import HttpSink, RedisStreamSink
from workflows.runner import RunRequest
from workflows.trigger import QUEUE, Trigger

log = logging.getLogger(__name__)


class LocalStack:
    """Everything ``retrain up`` runs, as a context manager (also used by the demo and tests)."""

    def __init__(self, settings: Settings, *, data_root: Path | None = None,
                 default_parameters: RunParameters | None = None,
                 console: Console | None = None) -> None:
        self.settings = settings
        self.data_root = data_root
        self.default_parameters = default_parameters
        self.console = console or Console(stderr=True)
        self._exit = contextlib.ExitStack()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.redis: RedisHandle
        self.serve_url = ""
        self.events_url = ""

    # lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._exit.close()

    def _start(self) -> None:
        from services.ingest_watcher.main import FolderSource, watching
        from services.selector.backends import LocalBackend
        from services.selector.champion import ChampionStore
        from services.selector.main import STREAM, build_selector, selector_consumer
        from services.serving.main import create_server
        from workflows.trigger import create_app as create_trigger

        s = self.settings
        serve_sock = bind(s.host, s.serve_port, "model server")
        self._exit.callback(serve_sock.close)
        events_sock = bind(s.host, s.events_port, "event trigger")
        self._exit.callback(events_sock.close)
        self.redis = self._exit.enter_context(open_redis(s.redis_url, s.home))
        client = self.redis.client

        server_app = create_server(s, poll_seconds=1.0)
        server = BackgroundServer(server_app, serve_sock, "model-server").start()
        self._exit.callback(server.stop)
        self.serve_url = server.url
        holder = server_app.state.holder

        dedup = Deduplicator(client, s.dedup_ttl_seconds, namespace="trigger")
        # a model.trained is appended to the stream before the trigger answers 202; the
        # selector's consumer group judges it there, so a crash loses no candidate
        self.trigger = Trigger(client, RedisStreamSink(client, STREAM, s.stream_max_length).send,
                               self.default_parameters)
        trigger = BackgroundServer(create_trigger(dedup, self.trigger.dispatch, s.api_keys), events_sock,
                                   "trigger").start()
        self._exit.callback(trigger.stop)
        self.events_url = trigger.url + "/events"
        self.sink = HttpSink(self.events_url, api_key=s.api_key)

        self.champions = ChampionStore(client, str(s.model_repo.resolve()))
        self.selector = build_selector(
            s, client, self.sink.send,
            LocalBackend(s.model_repo, MODEL_NAME, lambda _v: holder.refresh()))
        consumer = selector_consumer(client, self.selector, s)
        self._spawn("selector", lambda: consumer.run(self._stop))
        self._spawn("runner", self._runner_loop)
        if self.data_root is not None:
            # as `retrain watch` does: events wait in Redis's outbox until the trigger has them
            self.watcher = self._exit.enter_context(watching(
                s, client, FolderSource(self.data_root), self.sink,
                outbox_name="stack-watcher", max_backoff=2.0, stop=self._stop)).watcher

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _runner_loop(self) -> None:
        from workflows.runner import LocalRunner

        runner = LocalRunner(self.settings, self.redis.client, self.redis.url, self.sink.send,
                             self.console)
        while not self._stop.is_set():
            try:
                item = self.redis.client.blpop([QUEUE], timeout=1)
            except redis.RedisError:
                if self._stop.is_set():
                    return
                raise
            if item is None:
                continue
            try:
                runner.run(RunRequest.from_json(item[1]))
            except Exception as exc:
                log.exception("run failed")
                timeline.record(self.redis.client, "error", "run", error=str(exc))


def run_until_stopped(settings: Settings, console: Console) -> None:
    """``retrain up``: the stack on ``settings.data_uri`` (default: the home's data folder)
    until Ctrl-C or SIGTERM."""
    root = Path(settings.data_uri) if settings.data_uri else settings.data_dir
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalStack(settings, data_root=root, console=console) as stack:
        console.print(f"watching {root}\nevents  {stack.events_url}\nserving {stack.serve_url}"
                      f"/v1/models/fashion-mnist:predict\nRedis   {stack.redis.url}\n"
                      "Ctrl-C to stop")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
