"""A quiet terminal: ``retrain up`` prints one line per thing a person cares about, and no
command prints TensorFlow's, absl's, CUDA's or gRPC's native lines, or the HTTP requests
between the stack's own parts, unless ``--verbose`` asks."""

import os
import signal
import subprocess
import sys
import time

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
        tmp_path, redis_handle, r):
    watched = tmp_path / "data" / "fashion-mnist"
    up = subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", "up", "--data", str(watched)],
        env=_env(tmp_path, redis_handle), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("dashboard http://127.0.0.1:") for line in lines):
            lines.append(up.stdout.readline().rstrip())
            assert time.monotonic() < deadline and up.poll() is None, lines
        watched.parent.mkdir(parents=True)
        write_dataset(tmp_path / "staging", train=600, test=200).rename(watched)
        decisions = 0
        while decisions < 3:  # the three variants' decisions
            line = up.stdout.readline().rstrip()
            lines.append(line)
            decisions += " PROMOTED to version " in line or " rejected: " in line
            assert time.monotonic() < deadline and up.poll() is None, lines
    finally:
        os.killpg(up.pid, signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
    lines += rest.splitlines()
    text = "\n".join(lines)
    assert f"change noticed (watcher): {watched}" in text
    assert " ingested 800 records in " in text
    for variant in ("cnn", "dropout", "batch_norm"):
        assert f": {variant} trained in " in text, text
    assert ": dropout PROMOTED to version 1: " in text or ": cnn PROMOTED to version 1: " in text \
        or ": batch_norm PROMOTED to version 1: " in text
    assert [n for n in NOISE if n in text] == [], text


@pytest.mark.parametrize("verbose", [False, True])
def test_retrain_run_is_quiet_unless_verbose(tmp_path, redis_handle, r, verbose):
    """Ingestion alone loads TensorFlow (its TFRecord writer) in the command's own process:
    the same start-up lines as a selector or a trainer would print (those paths are in the
    retrain up test above)."""
    data = write_dataset(tmp_path / "data", train=600, test=200)
    done = subprocess.run(
        [sys.executable, "-m", "retrain.cli", "run", "--data", str(data), "--models", "none",
         *(["--verbose"] if verbose else [])],
        env=_env(tmp_path, redis_handle), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "ingested" in output  # the run's own account is there either way
    found = [n for n in ("oneDNN", "cuda drivers", "absl::InitializeLog") if n in output]
    assert found == (["oneDNN", "cuda drivers", "absl::InitializeLog"] if verbose else []), output
