"""The model server as KServe's predictor runs it: ``retrain serve --model-dir /mnt/models``,
where the storage initializer has copied one release (``<version>/saved_model.pb``)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.http import BackgroundServer, bind
from core.settings import Settings
from services.serving.main import create_server
from tests.conftest import free_port, wait_for
from tests.services.serving.test_compile_worker import alive, compile_workers

pytestmark = [pytest.mark.integration]


def test_serving_the_versions_kserves_storage_initializer_lays_out(tmp_path, saved_model):
    models = tmp_path / "mnt" / "models"
    shutil.copytree(saved_model, models / "7")
    port = free_port()
    # the default: compiled for LiteRT while it loads, ready once compiled and warmed
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home")}
    env.pop("RETRAIN_SERVE_COMPILE_AT_LOAD", None)
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "serve", "--model-dir",
                             str(models), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1/models/fashion-mnist"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.3)
        answer = httpx.post(url + ":predict", json={"instances": [[[0.0] * 28] * 28]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "7"
        assert len(answer.json()["predictions"][0]) == 10
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'retrain_serving_requests_total{code="200",protocol="v1"}' in metrics
        # RETRAIN_SERVE_TF_THREADS (default 1): one TensorFlow pool thread, not one per core;
        # the LiteRT converter's graph optimizer (grappler) leaves an idle pool of its own, one
        # thread per core, made once (however many versions are compiled)
        names = [(task / "comm").read_text().strip() for task in Path(f"/proc/{proc.pid}/task").iterdir()]
        assert names.count("tf_Compute") == 1 + len(os.sched_getaffinity(proc.pid)), names
        assert "retrain_serving_model_compiled 1.0" in metrics  # its first answer was LiteRT's
        # no compile worker: a new version is a new pod (its TensorFlow import, CPU taken
        # from the first requests, and its memory would buy nothing)
        assert compile_workers(proc.pid) == []
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]
    assert "version 7 compiled for LiteRT" in output
    # LiteRT's own line ("INFO: Created TensorFlow Lite XNNPACK delegate") is kept off the terminal
    assert "TensorFlow Lite" not in output, output[-3000:]


def test_a_server_stopped_while_it_compiles_leaves_no_compile_process(tmp_path, saved_model):
    """SIGTERM (how Kubernetes stops a pod) while a new version waits for its compile: the
    server's shutdown ends its compile worker before the server exits."""
    repo = tmp_path / "repo"
    shutil.copytree(saved_model, repo / "fashion-mnist" / "1")
    port = free_port()
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home")}
    env.pop("RETRAIN_SERVE_COMPILE_AT_LOAD", None)  # the default: compiled at load
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "serve", "--model-repo",
                             str(repo), "--port", str(port), "--grpc-port", str(free_port())],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, seconds=120, every=0.3)
        wait_for(lambda: compile_workers(proc.pid), seconds=60)
        workers = compile_workers(proc.pid)
        idle = _settled_cpu(workers[0])  # TensorFlow imported, waiting for a version
        shutil.copytree(saved_model, repo / "fashion-mnist" / "2")
        (repo / "fashion-mnist" / "2" / "assets.extra").mkdir(exist_ok=True)
        (repo / "fashion-mnist" / "2" / "assets.extra" / "other").write_text("not relabelled")
        # version 2 is being converted: the worker works (0.1 s of CPU; a conversion takes ~1 s)
        wait_for(lambda: _cpu(workers[0]) > idle + 0.1, seconds=60, every=0.01)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Application shutdown complete" in output, output[-3000:]  # uvicorn's, after ours
    assert [w for w in workers if alive(w)] == []
    assert "stays on TensorFlow" not in output, output[-3000:]  # a stop is not a verdict


def _cpu(pid: int) -> float:
    """Seconds of CPU process ``pid`` has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled_cpu(pid: int) -> float:
    """``_cpu(pid)`` once it has stopped growing for 0.3 s (a worker done importing)."""
    last = -1.0
    while (now := _cpu(pid)) != last:
        last = now
        time.sleep(0.3)
    return now


def test_compile_after_0_never_compiles_even_at_load(tmp_path, saved_model):
    """RETRAIN_SERVE_COMPILE_AFTER=0 turns LiteRT off, whatever COMPILE_AT_LOAD says: each
    version is served on TensorFlow, and no compile worker is started."""
    settings = Settings(home=tmp_path / "home", serve_compile_after=0, serve_compile_at_load=True,
                        grpc_port=0, _env_file=None)
    repo = tmp_path / "repo" / "fashion-mnist"
    shutil.copytree(saved_model, repo / "1")
    app = create_server(settings, tmp_path / "repo", poll_seconds=0.05)
    holder, before = app.state.holder, set(compile_workers(os.getpid()))
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    try:
        shutil.copytree(saved_model, repo / "2")
        (repo / "2" / "assets.extra").mkdir(exist_ok=True)
        (repo / "2" / "assets.extra" / "other").write_text("other files: loaded, not relabelled")
        wait_for(lambda: holder.served_version == 2, seconds=60)
        answer = httpx.post(f"{server.url}/v1/models/fashion-mnist:predict", timeout=30,
                            json={"instances": [np.full((28, 28), 0.5).tolist()]})
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "2"
        assert holder.current.compiled is None and holder.loads == 2
        assert holder.compiler is None and set(compile_workers(os.getpid())) <= before
    finally:
        server.stop()
