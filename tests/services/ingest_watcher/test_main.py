"""``retrain watch`` as a container runs it: it starts before its data exists (a fresh
install), is alive at once and ready only once the folder is there."""

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port, wait_for, write_dataset

pytestmark = [pytest.mark.integration]


def _status(port, path):
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_a_watcher_started_before_its_data_is_alive_and_becomes_ready(tmp_path, redis_handle):
    data = tmp_path / "data" / "fashion-mnist"  # not there yet, as on a fresh volume
    port = free_port()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
           "RETRAIN_REDIS_URL": redis_handle.url, "RETRAIN_WATCH_INTERVAL": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "watch", "--data", str(data),
                             "--sink", "http://127.0.0.1:9/events", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _status(port, "/livez") == 200 or proc.poll() is not None)
        assert proc.poll() is None, "the watcher exited without its data folder"
        assert _status(port, "/healthz") == 503  # alive, not ready: nothing to watch yet
        write_dataset(data, train=40, test=10)
        wait_for(lambda: _status(port, "/healthz") == 200)
        assert _status(port, "/livez") == 200
        wait_for(lambda: _emitted(port) == 1)  # the data that appeared is noticed
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    lines = output.splitlines()
    waiting = [line for line in lines if "waiting for it to appear" in line]
    assert len(waiting) == 1 and " INFO services.ingest_watcher." in waiting[0], output[-3000:]
    assert "does not exist yet" in waiting[0] and str(data) in waiting[0]
    assert [line for line in lines if " WARNING services.ingest_watcher." in line] == []
    assert "notifications" not in output
    assert "Traceback" not in output, output[-3000:]


def _emitted(port):
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["emitted"]
    except httpx.HTTPError:
        return None
