"""A quiet terminal: ``retrain up`` prints one line per thing a person cares about, and no
command prints TensorFlow's, absl's, CUDA's or gRPC's native lines, or the HTTP requests
between the stack's own parts, unless ``--verbose`` asks."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOISE = ("oneDNN", "cuda", "cuInit", "absl::InitializeLog", "fork_posix", "HTTP Request:")


def _env(tmp_path, redis_handle, **extra):
    return {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_OFFLINE": "1",
            "RETRAIN_REDIS_URL": redis_handle.url, "RETRAIN_SERVE_PORT": "0",
            "RETRAIN_GRPC_PORT": "0", "RETRAIN_EVENTS_PORT": "0", "RETRAIN_UI_PORT": "0",
            **extra}


def test_retrain_up_tells_each_change_run_training_and_decision_and_nothing_else(
        tmp_path, redis_handle, r, standin_trainer):
    """(Its trainings are the test trainer's: a training's own output goes to its train.log,
    never to this terminal; a real training's own lines are the next test's subject.)"""
    watched = tmp_path / "data" / "fashion-mnist"
    up = subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", "up", "--data", str(watched)],
        env=_env(tmp_path, redis_handle), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    printed: queue.Queue[str] = queue.Queue()  # read by a thread: a silent stack fails the
    reader = threading.Thread(target=lambda: [printed.put(x) for x in up.stdout], daemon=True)
    reader.start()  # test at its deadline instead of blocking it on a read
    lines = []
    deadline = time.monotonic() + 240

    def next_line() -> str:
        try:
            line = printed.get(timeout=max(0.0, deadline - time.monotonic())).rstrip()
        except queue.Empty:
            raise AssertionError(f"nothing more printed in time: {lines}") from None
        lines.append(line)
        return line

    try:
        while not next_line().startswith("dashboard http://127.0.0.1:"):
            assert up.poll() is None, lines
        watched.parent.mkdir(parents=True)
        write_dataset(tmp_path / "staging", train=600, test=200).rename(watched)
        decisions = 0
        while decisions < 3:  # the three variants' decisions
            line = next_line()
            decisions += " PROMOTED to version " in line or " rejected: " in line
            assert up.poll() is None, lines
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        reader.join(timeout=10)
    while not printed.empty():
        lines.append(printed.get().rstrip())
    text = "\n".join(lines)
    assert f"change noticed (watcher): {watched}" in text
    assert " ingested 800 records in " in text
    for variant in ("cnn", "dropout", "batch_norm"):
        assert f": {variant} trained in " in text, text
    assert ": dropout PROMOTED to version 1: " in text or ": cnn PROMOTED to version 1: " in text \
        or ": batch_norm PROMOTED to version 1: " in text
    assert [n for n in NOISE if n in text] == [], text


@pytest.mark.real_training
@pytest.mark.parametrize("verbose", [False, True])
def test_retrain_train_is_quiet_unless_verbose(tmp_path, redis_handle, ingested, verbose):
    """A command that loads TensorFlow in its own process (here a one-step training) prints
    TensorFlow's start-up lines only when asked. (``retrain run`` without a champion loads
    none: ingestion frames its TFRecords itself.)"""
    done = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "train", "--model", "cnn", "--dataset", ingested,
         "--out", str(tmp_path / "out" / "model"), "--steps-per-epoch", "1", "--batch-size", "16",
         *(["--verbose"] if verbose else [])],
        env=_env(tmp_path, redis_handle), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "step 1/1" in output  # the training's own account is there either way
    found = [n for n in ("oneDNN", "cuda drivers", "absl::InitializeLog") if n in output]
    # oneDNN announces itself only on processors with AVX-512 VNNI, AMX and the like
    if verbose:
        flags = set(Path("/proc/cpuinfo").read_text().split())
        onednn = bool(flags & {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_tile",
                               "avx512_bf16"})
        assert {"cuda drivers", "absl::InitializeLog"} <= set(found), output
        assert "oneDNN" in found or not onednn, output
    else:
        assert found == [], output


def test_retrain_run_without_a_champion_loads_no_tensorflow(tmp_path, redis_handle, r):
    data = write_dataset(tmp_path / "data", train=600, test=200)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "retrain.cli", "run", "--data", str(data),
         "--models", "none", "--verbose"],
        env=_env(tmp_path, redis_handle), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ingested" in done.stdout + done.stderr
    from tests.test_lazy_tensorflow import imported_tensorflow

    assert not imported_tensorflow(done.stderr), "retrain run imported TensorFlow"


def test_two_threads_quieting_tensorflow_at_once_leave_stderr_working():
    """The model server compiles versions for LiteRT in background threads, each with
    TensorFlow's native lines kept off the terminal: overlapping, they must not leave the
    process's stderr pointing at one of their temporary files."""
    script = (
        "import os, threading, time\n"
        "from core.tf_start import quiet_native\n"
        "def hold(start, seconds):\n"
        "    time.sleep(start)\n"
        "    with quiet_native():\n"
        "        os.write(2, b'I0000 a native line\\n')\n"
        "        time.sleep(seconds)\n"
        "threads = [threading.Thread(target=hold, args=a) for a in ((0, 0.3), (0.1, 0.4))]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "os.write(2, b'still on the terminal\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          env={**os.environ, "RETRAIN_LOG_LEVEL": "info"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"still on the terminal\n"


def test_tensorflow_s_objects_are_kept_out_of_the_collector_s_sight_once_it_is_loaded():
    """A process that loads TensorFlow (a runner measuring agreement, a trainer) keeps its
    modules' objects out of every later full collection (``gc.freeze``)."""
    script = ("import gc\nfrom core.tf_start import configure\nconfigure()\n"
              "print(gc.get_freeze_count(), len(gc.get_objects()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "RETRAIN_LOG_LEVEL": "info"})
    assert done.returncode == 0, done.stderr
    frozen, tracked = map(int, done.stdout.split())
    assert frozen > 100_000 and tracked < frozen / 10, done.stdout
