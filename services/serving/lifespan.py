"""What runs while the model server does: the first load, a thread that picks up new
versions (and the worker process that compiles them), the micro-batcher, and (when asked)
the Open Inference Protocol over gRPC."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from core.tf_start import freeze_what_is_loaded
from services.serving.plane import Plane

if TYPE_CHECKING:
    from services.serving.model import ModelHolder


class VersionPoller:
    """A thread serving the newest version every ``seconds`` (``ModelHolder.refresh``); a new
    model's objects join the frozen ones (``gc.freeze``), and ``serving`` is told the version."""

    def __init__(self, holder: ModelHolder, seconds: float,
                 serving: Callable[[int | None], None]) -> None:
        self._holder = holder
        self._seconds = seconds
        self._serving = serving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)

    def start(self) -> VersionPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        served = None
        while not self._stop.is_set():
            version = self._holder.refresh()
            if version != served:
                gc.freeze()
                served = version
            self._serving(version)
            self._stop.wait(self._seconds)


class Lifespan:
    """FastAPI's ``lifespan``: ``grpc`` (host, port; port 0: any free one, then in
    ``app.state.grpc_port``) serves the same plane over gRPC."""

    def __init__(self, plane: Plane, poll_seconds: float,
                 grpc: tuple[str, int] | None = None) -> None:
        self.plane = plane
        self.poll_seconds = poll_seconds
        self.grpc = grpc

    @asynccontextmanager
    async def __call__(self, app: Any) -> AsyncIterator[None]:
        plane = self.plane
        await run_in_threadpool(plane.holder.refresh)
        freeze_what_is_loaded()
        poller = VersionPoller(plane.holder, self.poll_seconds, plane.metrics.serving).start()
        plane.open()
        grpc_server = None
        if self.grpc is not None:  # the same model, batching, limits and keys over gRPC
            # before gRPC starts: its fork handlers restart its poller in a forked child, whose
            # descriptors subprocess then closes before exec; the poller, its epoll gone,
            # aborts the child (grpcio >= 1.81, grpc/grpc#43055: `retrain up`'s trainers died
            # of SIGABRT once TensorFlow was no longer imported ahead of gRPC). Every child of
            # the server's process execs at once and none uses its gRPC: no handler is needed.
            os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
            from services.serving.grpc_api import start

            grpc_server, app.state.grpc_port = await start(plane, *self.grpc)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            poller.stop()
            plane.holder.close()  # its compile worker: no process outlives the server
            plane.close()
