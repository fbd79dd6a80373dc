"""Versions compiled for LiteRT in a worker process, while another version serves traffic.

TensorFlow's LiteRT converter is Python and native code that holds the interpreter lock for
long stretches: beside a thread ticking every millisecond, converting this small model
stopped it for 100 ms to 2 s at a time (a full garbage collection the converter asks for,
the graph's import and freezing). In the server's process every request waits on those
pauses; in another process they cost the server some of a core's time, not its lock. The
first version, with no traffic to disturb, is compiled in the server's own process
(``model.LoadedModel.compile``): faster to ready.

The other process is one long-lived worker (``CompileWorker``), started when the server has
its first version, so that it has imported TensorFlow (3-4 s on 2 cores at load average 2,
more on a busier machine) before the next version arrives: a promotion then pays for the
conversion alone. It converts one SavedModel at a time and writes the flatbuffer to a file;
the server loads and warms it (``CompiledModel.warm``). The worker costs its memory while
it waits (TensorFlow imported: ~535 MB resident, ~180 MB of it its own, the rest
TensorFlow's libraries, shared with the server's), and never outlives the server: closed with it, and gone by itself when its parent dies (its requests'
pipe reaches its end; a thread watches the parent's pid meanwhile). ``PR_SET_PDEATHSIG`` is
not used: Linux sends it when the *thread* that started the child ends, and the server
starts the worker from pool threads that come and go.

The line protocol, over the worker's stdin and stdout (stderr goes to a file, read only to
say why a worker died):

    python -m services.serving.compile_apart PARENT_PID
    worker: ready                                          (once TensorFlow is imported)
    server: {"saved_model": "...", "out": "..."}           (one line per conversion)
    worker: {"error": null}  or  {"error": "the converter's last line of error"}
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow: imported by the server's modules once configured (main)
    from services.serving.lite import CompiledModel

TIMEOUT = 600.0  # seconds; a worker past it is killed and the version stays on TensorFlow
READY = "ready"


class CompileFailedError(Exception):
    """The converter refused the model (its last line of error output is the message), or
    the worker failed otherwise; ``passing``: a failure another try may not meet (the worker
    killed, or past its time), not a verdict on the model."""

    passing = False


class _WorkerDiedError(CompileFailedError):
    """The worker ended before it answered (killed, crashed, or closed); ``crashed``: it
    ended by itself while it had the conversion (the converter may crash on this model: not
    tried again), not killed from outside."""

    def __init__(self, message: str, crashed: bool = False) -> None:
        super().__init__(message)
        self.crashed = crashed
        self.passing = not crashed


class _Worker:
    """One worker process, its pipes, and whether it has said it is ready."""

    def __init__(self) -> None:
        # the worker's stderr (closed by ``end``): read only to say why it ended
        self.errors: IO[bytes] = tempfile.TemporaryFile(prefix="retrain-worker-")  # noqa: SIM115
        try:  # -P: the modules installed, never a same-named package in the current folder
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        except BaseException:
            self.errors.close()
            raise
        self.ready = False
        self._ending = threading.Lock()  # one ``end`` at a time
        self._ended = False

    def ask(self, request: dict[str, str]) -> str | None:
        """Send a conversion, wait for its answer: the converter's error, or None."""
        assert self.process.stdin is not None
        self.wait_ready()  # a compile asked for while TensorFlow is imported waits for it
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # a broken pipe (it has ended), or closed meanwhile
            raise self._died() from None
        try:
            return json.loads(self._line())["error"]  # type: ignore[no-any-return]
        except (ValueError, KeyError, TypeError):  # no answer (it ended), or not one
            raise self._died(converting=True) from None

    def wait_ready(self) -> None:
        if not self.ready:
            if self._line() != READY:
                raise self._died()
            self.ready = True

    def _line(self) -> str:
        assert self.process.stdout is not None
        try:
            return self.process.stdout.readline().decode(errors="replace").strip()
        except ValueError:  # closed meanwhile (``CompileWorker.close``)
            return ""

    def _died(self, converting: bool = False) -> _WorkerDiedError:
        self.process.kill()  # when it has not ended already: out of step, of no more use
        code = self.process.wait()
        try:
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
        except ValueError:  # closed meanwhile
            lines = []
        crashed = converting and code not in (-signal.SIGKILL, -signal.SIGTERM)
        return _WorkerDiedError(f"the compile worker ended (exit code {code})"
                                + (f": {lines[-1]}" if lines else ""), crashed)

    def end(self) -> None:
        """Kill the process and close its pipes, once: the server's stop (``close``) and a
        compile that failed meanwhile (``_forget``) may both ask, from two threads, and two
        closes of one pipe at once fail ("I/O operation on closed file")."""
        with self._ending:  # the second waits until the process is gone, then has nothing to do
            if self._ended:
                return
            self.process.kill()
            self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout, self.errors):
                if pipe is not None:
                    pipe.close()
            self._ended = True


class CompileWorker:
    """The worker process converting versions for LiteRT (one conversion at a time),
    started by ``start`` (returns at once) or by the first ``compile``; one that has died is
    replaced by the next ``compile``. ``close`` ends it for good."""

    def __init__(self) -> None:
        self._busy = threading.Lock()  # one compile at a time
        self._state = threading.Lock()  # the process: started, replaced, ended
        self._worker: _Worker | None = None
        self._closed = False
        self.started = 0  # worker processes started (a second one: the first died)

    @property
    def closed(self) -> bool:
        """Closed for good (the server is stopping): a compile under way ends unfinished."""
        return self._closed

    @property
    def pid(self) -> int | None:
        """The worker's process id (None: none started yet, or closed)."""
        worker = self._worker
        return None if worker is None else worker.process.pid

    def start(self) -> None:
        """Start a worker unless one is running (or it is closed): it imports TensorFlow in
        the background. One that cannot start is tried again by the next ``compile``."""
        with contextlib.suppress(_WorkerDiedError, OSError):
            self._running()

    def wait_ready(self) -> None:
        """Start a worker unless one is running, and wait until it has imported TensorFlow
        (``CompileFailedError`` if it ends first)."""
        with self._busy:
            self._running().wait_ready()

    def close(self) -> None:
        """End the worker (a conversion under way fails) and start no other."""
        with self._state:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.end()

    def compile(self, saved_model: Path, timeout: float = TIMEOUT) -> CompiledModel:
        """``saved_model``'s ``predict_images`` signature converted by the worker (waiting
        for it to be ready), then loaded and warmed here (``CompiledModel.warm``);
        ``CompileFailedError`` when it cannot. Past ``timeout`` seconds the worker is
        killed (the next compile starts another); a worker that ends before it answers
        (found dead, killed) is replaced, once; one that crashes converting is not tried
        again (the model may crash the converter: the version stays on TensorFlow, and the
        next compile starts another worker)."""
        from services.serving.lite import CompiledModel

        deadline = time.monotonic() + timeout
        with self._busy, tempfile.TemporaryDirectory(prefix="retrain-litert-") as folder:
            out = Path(folder) / "model.tflite"
            try:
                error = self._convert(saved_model, out, deadline, timeout)
            except _WorkerDiedError as died:
                if died.crashed:
                    raise
                error = self._convert(saved_model, out, deadline, timeout)  # a fresh one
            if error is not None or not out.is_file():
                raise CompileFailedError(error or "the compile worker wrote no model")
            flatbuffer = out.read_bytes()
        return CompiledModel(flatbuffer).warm()

    def _convert(self, saved_model: Path, out: Path, deadline: float,
                 timeout: float) -> str | None:
        worker = self._running()
        late = threading.Event()

        def kill() -> None:
            late.set()
            worker.process.kill()

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
        timer.daemon = True
        timer.start()
        try:
            return worker.ask({"saved_model": str(saved_model), "out": str(out)})
        except _WorkerDiedError:
            self._forget(worker)
            if late.is_set():
                late_error = CompileFailedError(f"the LiteRT converter took more than {timeout:g}s")
                late_error.passing = True
                raise late_error from None
            raise
        finally:
            timer.cancel()

    def _running(self) -> _Worker:
        with self._state:
            if self._closed:
                raise _WorkerDiedError("the compile worker is closed")
            worker = self._worker
            if worker is None or worker.process.poll() is not None:
                if worker is not None:
                    worker.end()
                worker = self._worker = _Worker()
                self.started += 1
            return worker

    def _forget(self, worker: _Worker) -> None:
        with self._state:
            if self._worker is worker:
                self._worker = None
        worker.end()


def _last_line(exc: BaseException) -> str:
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def _exit_with(parent: int) -> None:
    """Exit as soon as ``parent`` has (mid-conversion too, when no one reads the pipe)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """The worker: import TensorFlow, say ``ready``, then convert each SavedModel asked for
    until its stdin ends (the server closed it, or died)."""
    (parent,) = argv or sys.argv[1:]
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's descriptor, alone:
    os.dup2(2, 1)  # anything else written to stdout (a converter's print) goes to stderr
    _exit_with(int(parent))
    # not niced: on a saturated machine a niced child took 30 s and more to convert (measured)
    from core.tf_start import configure, quiet_native

    configure()
    import tensorflow as tf

    from repository.layout import ARRAYS_SIGNATURE

    replies.write(READY + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            with quiet_native():
                converter = tf.lite.TFLiteConverter.from_saved_model(
                    request["saved_model"], signature_keys=[ARRAYS_SIGNATURE])
                flatbuffer = converter.convert()
            Path(request["out"]).write_bytes(flatbuffer)
            error = None
        except Exception as exc:  # noqa: BLE001 - the converter's refusal: said, and on
            error = _last_line(exc)
        replies.write(json.dumps({"error": error}) + "\n")


if __name__ == "__main__":
    main()
