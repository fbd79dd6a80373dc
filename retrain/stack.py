"""The local stack: trigger, runner, selector, model server and watcher on this machine."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from events import Event, EventType
from events.types import RUN_REQUESTS
from events.dedup import Deduplicator
from events.payloads import RunParameters
from events.sinks import HttpSink
from retrain import timeline
from retrain.http import BackgroundServer, bind
from retrain.redis_store import RedisHandle, open_redis
from retrain.settings import MODEL_NAME, Settings
from workflows.runner import RunRequest

log = logging.getLogger(__name__)
QUEUE = "retrain:queue"


def describe(event: Event) -> dict[str, Any]:
    """The few fields of an event worth a timeline line."""
    data = event.data.model_dump()
    keep = ("run_id", "model_type", "trigger", "digest", "reason", "val_accuracy",
            "candidate_accuracy", "champion_accuracy", "version", "records", "seconds")
    return {"id": event.id, **{k: data[k] for k in keep if data.get(k) is not None}}


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
        self._selector_queue: queue.Queue[Event | None] = queue.Queue()
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
        self._selector_queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._exit.close()

    def _start(self) -> None:
        from services.selector.backends import LocalBackend
        from services.selector.champion import ChampionStore
        from services.selector.evaluate import Evaluator
        from services.selector.service import Selector
        from services.serving.app import create_app as create_server
        from services.serving.limits import RateLimiter
        from workflows.trigger import create_app as create_trigger

        s = self.settings
        serve_sock = bind(s.host, s.serve_port, "model server")
        self._exit.callback(serve_sock.close)
        events_sock = bind(s.host, s.events_port, "event trigger")
        self._exit.callback(events_sock.close)
        self.redis = self._exit.enter_context(open_redis(s.redis_url, s.home))
        client = self.redis.client

        server_app = create_server(s.model_repo, poll_seconds=1.0, limiter=RateLimiter(
            s.rate_limit_anon, s.rate_limit_keyed, s.api_keys), batching=s.batch_config())
        server = BackgroundServer(server_app, serve_sock, "model-server").start()
        self._exit.callback(server.stop)
        self.serve_url = server.url
        holder = server_app.state.holder

        dedup = Deduplicator(client, s.dedup_ttl_seconds, namespace="trigger")
        trigger = BackgroundServer(create_trigger(dedup, self.dispatch, s.api_keys), events_sock,
                                   "trigger").start()
        self._exit.callback(trigger.stop)
        self.events_url = trigger.url + "/events"
        self.sink = HttpSink(self.events_url, api_key=s.api_keys[0] if s.api_keys else None)

        self.champions = ChampionStore(client, str(s.model_repo.resolve()))
        self.selector = Selector(self.champions,
                                 LocalBackend(s.model_repo, MODEL_NAME, lambda _v: holder.refresh()),
                                 Evaluator(), self.sink.send, s.champion_policy())
        self._spawn("selector", self._selector_loop)
        self._spawn("runner", self._runner_loop)
        if self.data_root is not None:
            from events.outbox import Outbox
            from services.ingest_watcher.watcher import DirectoryWatcher

            # as `retrain watch` does: events wait in Redis until the trigger has them
            import hashlib

            scope = hashlib.sha256(str(self.data_root.resolve()).encode()).hexdigest()[:12]
            outbox = Outbox(client, self.sink, f"stack-watcher:{scope}", max_backoff=2.0).start()
            self._exit.callback(outbox.stop)
            self.watcher = DirectoryWatcher(self.data_root, outbox, client, s.home / "watcher",
                                            interval=s.watch_interval, settle=s.watch_settle)
            self._spawn("watcher", lambda: self.watcher.run(self._stop))

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # routing (what a Sensor does on a cluster) ---------------------------------------------
    def dispatch(self, event: Event) -> None:
        client = self.redis.client
        timeline.record(client, "event", event.type.short, **describe(event))
        if event.type in RUN_REQUESTS:
            client.rpush(QUEUE, RunRequest.from_event(event, self.default_parameters).to_json())
        elif event.type is EventType.MODEL_TRAINED:
            self._selector_queue.put(event)

    def _selector_loop(self) -> None:
        while True:
            event = self._selector_queue.get()
            if event is None:
                return
            try:
                self.selector.handle(event)
            except Exception as exc:  # one bad candidate must not stop the selector
                log.exception("selection failed")
                timeline.record(self.redis.client, "error", "select", error=str(exc),
                                id=event.id)

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
