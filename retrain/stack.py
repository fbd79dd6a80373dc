"""The local stack: trigger, runner, selector, model server and watcher on this machine."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from rich.console import Console

from core import timeline
from core.errors import RetrainError
from core.http import BackgroundServer, bind
from core.http_writes import WaveWriteHttpTools
from core.redis_store import RedisHandle, open_redis
from core.settings import MODEL_NAME, Settings
from core.supervise import Outage, Supervisor
from events.dedup import Deduplicator
from events.payloads import RunParameters
from events.sinks import HttpSink, RedisStreamSink
from workflows.trigger import Trigger

if TYPE_CHECKING:
    from services.selector.guard import Guard

log = logging.getLogger(__name__)


class LocalStack:
    """Everything ``retrain up`` runs, as a context manager (also used by the demo and tests)."""

    def __init__(self, settings: Settings, *, data_root: Path | None = None,
                 default_parameters: RunParameters | None = None,
                 console: Console | None = None, narrate: bool = False) -> None:
        self.settings = settings
        self.data_root = data_root
        self.default_parameters = default_parameters
        self.console = console or Console(stderr=True)
        self.narrate = narrate  # one line per change, run, training and decision (retrain up)
        self._exit = contextlib.ExitStack()
        self._stop = threading.Event()
        self.supervisor: Supervisor
        self.redis: RedisHandle
        self.serve_url = ""
        self.grpc_target = ""  # host:port of the model server's gRPC API
        self.events_url = ""
        self.ui_url = ""  # the dashboard
        self.guard: Guard | None = None  # the live guard, watching each promotion

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
        self.supervisor.join(timeout=30)
        self._exit.close()

    def _start(self) -> None:
        from events.receiver import FromSender
        from services.ingest_watcher.main import FolderSource, watching
        from services.selector.backends import LocalBackend
        from services.selector.champion import ChampionStore
        from services.selector.main import STREAM, build_guard, build_selector, selector_consumer
        from services.serving.main import create_server
        from workflows.trigger import create_app as create_trigger

        s = self.settings
        serve_sock = bind(s.host, s.serve_port, "model server")
        self._exit.callback(serve_sock.close)
        events_sock = bind(s.host, s.events_port, "event trigger")
        self._exit.callback(events_sock.close)
        ui_sock = bind(s.host, s.ui_port, "dashboard")
        self._exit.callback(ui_sock.close)
        if s.grpc_port:  # the model server's gRPC port, taken? say so before anything starts
            bind(s.host, s.grpc_port, "model server (gRPC)").close()
        self.redis = self._exit.enter_context(open_redis(s.redis_url, s.home))
        client = self.redis.client
        # a thread that cannot go on stops the stack: `retrain up` then exits non-zero
        self.supervisor = Supervisor(client, lambda _why: self._stop.set())

        server_app = create_server(s, poll_seconds=1.0)
        server = BackgroundServer(server_app, serve_sock, "model-server",
                                  http=WaveWriteHttpTools).start()
        self._exit.callback(server.stop)
        self.serve_url = server.url
        self.grpc_target = f"{s.host}:{server_app.state.grpc_port}"
        holder = server_app.state.holder

        dedup = Deduplicator(client, s.dedup_ttl_seconds, namespace="trigger")
        # a model.trained is appended to the stream before the trigger answers 202; the
        # selector's consumer group judges it there, so a crash loses no candidate
        from retrain.narrate import printer

        self.trigger = Trigger(client, RedisStreamSink(client, STREAM, s.stream_max_length).send,
                               self.default_parameters,
                               printer(self.console) if self.narrate else None)
        # told who sent each event: an approval names the API key that sent it, not a name
        trigger = BackgroundServer(create_trigger(dedup, FromSender(self.trigger.dispatch),
                                                  s.api_keys,
                                                  self.supervisor.problem, client),
                                   events_sock, "trigger").start()
        self._exit.callback(trigger.stop)
        self.events_url = trigger.url + "/events"
        self.sink = HttpSink(self.events_url, api_key=s.api_key)

        self.champions = ChampionStore(client, str(s.model_repo.resolve()))
        from workflows import record

        self.selector = build_selector(
            s, client, self.sink.send,
            LocalBackend(s.model_repo, MODEL_NAME, lambda _v: holder.refresh()),
            keep=record.keep)  # a served version's run is kept for good: its lineage reads it
        from dashboard.main import create_ui, in_process

        ui = BackgroundServer(create_ui(s, client, self.serve_url, in_process(self.selector.rollback)),
                              ui_sock, "dashboard").start()
        self._exit.callback(ui.stop)
        self.ui_url = ui.url + "/"
        consumer = selector_consumer(client, self.selector, s)
        self.supervisor.spawn("selector", lambda: consumer.run(self._stop))
        # the live guard reads this stack's own model server
        guard = build_guard(s, client, self.selector, self.sink.send, self.serve_url + "/metrics")
        self.guard = guard  # None with RETRAIN_GUARD=false
        if guard is not None:
            if self.narrate:  # a rollback is told by its event; a settled version by this
                from retrain.narrate import guard_printer

                guard.on_outcome(guard_printer(self.console))
            self.supervisor.spawn("guard", lambda: guard.run(self._stop))
        self.supervisor.spawn("runner", self._runner_loop)
        if self.data_root is not None:
            # as `retrain watch` does: events wait in Redis's outbox until the trigger has them
            self.watcher = self._exit.enter_context(watching(
                s, client, FolderSource(self.data_root), self.sink,
                outbox_name="stack-watcher", max_backoff=2.0, stop=self._stop)).watcher

    def _runner_loop(self) -> None:
        """Take run requests (each stays in Redis's processing list until its run has ended)
        and run them; runs whose runner died are resumed, at start and every lease period.
        A Redis outage is waited out: the loop logs it once and goes on when Redis is back."""
        from workflows.lease import LEASE_SECONDS
        from workflows.queue import RunQueue
        from workflows.runner import LocalRunner

        runner = LocalRunner(self.settings, self.redis.client, self.redis.url, self.sink.send,
                             self.console)
        queue = RunQueue(self.redis.client)
        outage = Outage("Redis (run queue)")
        next_recovery = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_recovery:
                    queue.recover()
                    next_recovery = time.monotonic() + LEASE_SECONDS
                taken = queue.take(timeout=1)
                outage.ok()
            except (redis.RedisError, OSError) as exc:
                self._stop.wait(outage.failed(exc))
                continue
            if taken is None:
                continue
            try:
                runner.run(taken.request)
            except (redis.RedisError, OSError) as exc:
                # left in the processing list: resumed once Redis is back and its lease is gone
                log.warning("run %s interrupted (%s); it will be resumed",
                            taken.request.run_id, type(exc).__name__)
                continue
            except Exception as exc:
                log.exception("run %s failed", taken.request.run_id)
                with contextlib.suppress(redis.RedisError):
                    timeline.record(self.redis.client, "error", "run", error=str(exc))
            with contextlib.suppress(redis.RedisError):  # else resumed later: at least once
                queue.done(taken)


def run_until_stopped(settings: Settings, console: Console) -> None:
    """``retrain up``: the stack on ``settings.data_uri`` (default: the home's data folder)
    until Ctrl-C or SIGTERM."""
    root = Path(settings.data_uri) if settings.data_uri else settings.data_dir
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops it even when started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then raises no KeyboardInterrupt)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalStack(settings, data_root=root, console=console, narrate=True) as stack:
        console.print(f"dashboard {stack.ui_url}\nwatching {root}\nevents  {stack.events_url}\nserving {stack.serve_url}"
                      f"/v1/models/fashion-mnist:predict\ngRPC    {stack.grpc_target} "
                      f"(inference.GRPCInferenceService)\nRedis   {stack.redis.shown}\n"
                      "Ctrl-C to stop")
        try:
            while not stop.wait(0.5) and stack.supervisor.failure is None:
                pass
        except KeyboardInterrupt:
            pass
    if stack.supervisor.failure is not None:
        raise RetrainError(f"stopped: {stack.supervisor.failure}")
