"""The compile worker: one process that imports TensorFlow once and converts every version
the server compiles while another serves; replaced when it dies or runs past its time, and
never outliving the server that started it. (One worker shared by the tests that can: each
new one imports TensorFlow, seconds of CPU.)"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.http import BackgroundServer, bind
from services.serving.app import create_app
from services.serving.compile_apart import CompileFailedError, CompileWorker
from services.serving.model import import_tensorflow, load
from tests.conftest import wait_for
from tests.services.serving.test_lite import odd_model

tf = import_tensorflow()  # (the server imports it with its first version)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended and not yet reaped, does not)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, ProcessLookupError):  # a thread or process ended meanwhile
        return b""


def compile_workers(pid: int) -> list[int]:
    """The compile workers among the children of process ``pid`` (each thread's)."""
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in _read(task / "children").split()]
    return [child for child in children if alive(child)
            and b"services.serving.compile_apart" in _read(Path(f"/proc/{child}/cmdline"))]


@pytest.fixture(scope="module")
def worker():
    shared = CompileWorker()
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def tensorflows(saved_model):
    """Images, and TensorFlow's answers for them."""
    images = np.random.default_rng(0).random((9, 28, 28), np.float32)
    answers = load(saved_model, 1).serve_arrays(images=tf.constant(images))["probabilities"]
    return images, answers.numpy()


def _answers_as(expected, compiled):
    images, reference = expected
    np.testing.assert_allclose(compiled.predict(images), reference, rtol=1e-5, atol=1e-6)


def test_every_compile_is_converted_by_the_same_worker(worker, saved_model, tensorflows):
    """The second compile pays no TensorFlow import: the same process converts it."""
    first = worker.compile(saved_model)
    pid = worker.pid
    second = worker.compile(saved_model)
    assert worker.pid == pid and alive(pid) and worker.started == 1
    _answers_as(tensorflows, first)
    _answers_as(tensorflows, second)


def test_a_model_the_converter_refuses_fails_and_the_worker_goes_on(worker, saved_model,
                                                                     tensorflows, tmp_path):
    odd_model(tmp_path / "odd")
    worker.start()
    pid = worker.pid
    with pytest.raises(CompileFailedError) as refused:
        worker.compile(tmp_path / "odd")
    assert "the compile worker ended" not in str(refused.value) and str(refused.value)
    assert worker.pid == pid and alive(pid)
    _answers_as(tensorflows, worker.compile(saved_model))
    assert worker.pid == pid


def test_a_killed_worker_is_replaced_by_the_next_compile(worker, saved_model, tensorflows):
    worker.start()
    killed, started = worker.pid, worker.started
    os.kill(killed, signal.SIGKILL)  # not waited for: found dead, or dying as it is asked
    _answers_as(tensorflows, worker.compile(saved_model))
    assert worker.pid != killed and not alive(killed) and worker.started == started + 1


def test_a_worker_that_crashes_converting_is_not_tried_again(worker, saved_model, tensorflows):
    """A worker that ends by itself mid-conversion (a converter that crashes on this model):
    that compile fails at once, with no second worker to crash; the next compile starts one."""
    import threading

    worker.wait_ready()
    crashed, started = worker.pid, worker.started
    idle = -1.0
    while idle != (idle := cpu_seconds(crashed)):  # done with its start: waiting for requests
        time.sleep(0.3)
    outcome = []
    compiling = threading.Thread(target=lambda: outcome.append(_attempt(worker, saved_model)))
    compiling.start()
    wait_for(lambda: cpu_seconds(crashed) > idle + 0.1, seconds=60, every=0.01)  # converting
    os.kill(crashed, signal.SIGSEGV)
    compiling.join(timeout=60)
    assert isinstance(outcome[0], CompileFailedError) and "exit code -11" in str(outcome[0])
    assert worker.started == started  # not tried again
    _answers_as(tensorflows, worker.compile(saved_model))
    assert worker.started == started + 1


def _attempt(worker, saved_model):
    try:
        return worker.compile(saved_model)
    except CompileFailedError as exc:
        return exc


def cpu_seconds(pid: int) -> float:
    """Seconds of CPU process ``pid`` has used (0 once it is gone)."""
    fields = _read(Path(f"/proc/{pid}/stat")).rsplit(b")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def test_a_compile_past_its_time_kills_the_worker_and_the_next_starts_another(
        worker, saved_model, tensorflows):
    worker.wait_ready()
    late = worker.pid
    with pytest.raises(CompileFailedError, match="took more than 0.01s"):
        worker.compile(saved_model, timeout=0.01)
    assert not alive(late) and worker.pid is None
    _answers_as(tensorflows, worker.compile(saved_model))
    assert worker.pid not in (None, late)


def test_the_server_compiles_by_its_worker_and_ends_it_when_it_stops(tmp_path, saved_model):
    """Started once the first version serves, it compiles the next; the server's shutdown
    (its lifespan) ends it, though this process, its parent, lives on."""
    repo = tmp_path / "repo" / "fashion-mnist"
    shutil.copytree(saved_model, repo / "1")
    app = create_app(tmp_path / "repo", poll_seconds=0.05, compile_at_load=True)
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    holder = app.state.holder
    try:
        pid, first = holder.compiler.pid, holder.current.compiled
        assert pid is not None and pid in compile_workers(os.getpid()) and first is not None
        shutil.copytree(saved_model, repo / "2")
        (repo / "2" / "assets.extra").mkdir(exist_ok=True)
        (repo / "2" / "assets.extra" / "other").write_text("other files: loaded, not relabelled")
        wait_for(lambda: holder.served_version == 2, seconds=120)
        assert holder.loads == 2 and holder.current.compiled not in (None, first)
        assert holder.compiler.pid == pid and holder.compiler.started == 1
    finally:
        server.stop()
    assert not alive(pid) and pid not in compile_workers(os.getpid())


def test_a_closed_worker_starts_no_process(saved_model):
    """What a version arriving during the server's shutdown meets: no worker, a failed
    compile (the version stays on TensorFlow), nothing raised by ``start``."""
    closed = CompileWorker()
    closed.close()
    closed.start()
    assert closed.pid is None and closed.started == 0
    with pytest.raises(CompileFailedError, match="closed"):
        closed.compile(saved_model)
    assert closed.started == 0


def test_a_worker_started_from_a_folder_with_packages_of_the_same_names_runs_ours(
        tmp_path, monkeypatch, saved_model, tensorflows):
    """A user's project folder may hold its own ``core`` or ``services``: the worker, started
    from there, still runs the installed modules (``python -P``)."""
    for package in ("core", "services"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise ImportError('not ours')\n")
    monkeypatch.chdir(tmp_path)
    worker = CompileWorker()
    try:
        _answers_as(tensorflows, worker.compile(saved_model))
        assert worker.started == 1
    finally:
        worker.close()


# a server's stand-in: starts a worker, says its pid (once it is ready, with "idle"), waits
PARENT = """
import sys, time
from services.serving.compile_apart import CompileWorker
worker = CompileWorker()
worker.wait_ready() if sys.argv[1] == "idle" else worker.start()
print(worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("when", ["idle", "starting"])
def test_a_worker_whose_parent_is_killed_ends_by_itself(when):
    """SIGKILL leaves the server no time to close it: an idle worker sees its requests' pipe
    end, one importing TensorFlow (or converting) sees its parent gone."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, when], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.kill()
        parent.communicate()
    wait_for(lambda: not alive(pid), seconds=60)


def test_a_worker_ended_from_two_threads_at_once_ends_once_without_an_error():
    """The server's stop (``close``) and a compile failing meanwhile (``_forget``) both end
    the worker: two closes of one pipe at once used to fail the server's shutdown."""
    import threading

    from services.serving.compile_apart import _Worker

    for _ in range(10):
        worker = _Worker()
        start, errors = threading.Barrier(2), []

        def end(worker=worker, start=start, errors=errors):
            start.wait()
            try:
                worker.end()
            except Exception as exc:  # noqa: BLE001 -- what the shutdown would have raised
                errors.append(exc)

        threads = [threading.Thread(target=end) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and worker.process.poll() is not None
        assert worker.process.stdout.closed and worker.errors.closed
