"""TensorFlow (3-4 s of CPU to import) is imported when it is first needed: ``retrain up`` and
``retrain serve`` with no model version yet start without it, and answer as a server without
a model does; the first version, published later, is served as always, TensorFlow's
start-up lines kept off the terminal."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, wait_for
from tests.services.serving.test_compile_worker import compile_workers

pytestmark = [pytest.mark.integration]
NOISE = ("oneDNN", "cuda", "cuInit", "absl::InitializeLog", "I0000 ")


def _env(tmp_path: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_OFFLINE": "1",
            "RETRAIN_REDIS_URL": redis_url, "RETRAIN_SERVE_PORT": "0", "RETRAIN_GRPC_PORT": "0",
            "RETRAIN_EVENTS_PORT": "0", "RETRAIN_UI_PORT": "0", **extra}


def tensorflow_loaded(pid: int) -> bool:
    """Whether TensorFlow's native library is mapped into process ``pid``."""
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


def imported_tensorflow(importtime: str) -> bool:
    """Whether ``-X importtime``'s lines name the ``tensorflow`` package."""
    # nested imports are indented after the bar: "|   tensorflow"
    return re.search(r"\|\s*tensorflow\s*$", importtime, re.MULTILINE) is not None


def _started(proc: subprocess.Popen, output: Path, line: str) -> str:
    """The first line of ``output`` starting with ``line``, once the process has written it."""
    def found() -> bool:
        assert proc.poll() is None, output.read_text()[-3000:]
        return any(x.startswith(line) for x in output.read_text().splitlines())

    wait_for(found, seconds=120)
    return next(x for x in output.read_text().splitlines() if x.startswith(line))


def _stopped(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def test_retrain_up_with_no_data_and_no_model_never_imports_tensorflow(tmp_path, redis_handle):
    data = tmp_path / "data"
    data.mkdir()
    output = tmp_path / "output"
    with output.open("w") as out:
        up = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "retrain.cli", "up",
                               "--data", str(data)], env=_env(tmp_path, redis_handle.url),
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        _started(up, output, "dashboard http://127.0.0.1:")
        serving = _started(up, output, "serving http://").split()[1].split("/v1/")[0]
        assert httpx.get(serving + "/v2/health/live", timeout=5).json() == {"live": True}
        assert httpx.get(serving + "/v2/health/ready", timeout=5).status_code == 503
        assert not tensorflow_loaded(up.pid)
    finally:
        code = _stopped(up)
    text = output.read_text()
    assert code == 0, text[-3000:]
    assert not imported_tensorflow(text), "retrain up imported TensorFlow with no model"


def test_retrain_serve_imports_tensorflow_with_its_first_version_quietly(
        tmp_path, redis_handle, saved_model):
    """Before a version: live, not ready, the model 503, no TensorFlow. The first version
    published: TensorFlow imported (its thread pools limited first, as ``retrain serve``
    does), the version compiled at load and served over HTTP and gRPC, the compile worker
    started after it."""
    import tritonclient.grpc as triton

    repo = tmp_path / "repo"
    (repo / "fashion-mnist").mkdir(parents=True)
    port, grpc_port = free_port(), free_port()
    output = tmp_path / "output"
    env = _env(tmp_path, redis_handle.url, RETRAIN_SERVE_COMPILE_AT_LOAD="1")
    with output.open("w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "retrain.cli", "serve", "--model-repo",
                                  str(repo), "--port", str(port),
                                  "--grpc-port", str(grpc_port)], env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def live() -> bool:
            assert serve.poll() is None, output.read_text()[-3000:]
            try:
                return httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(live, seconds=60)
        assert httpx.get(url + "/v2/health/ready", timeout=5).json() == {"ready": False}
        status = httpx.get(url + "/v1/models/fashion-mnist", timeout=5)
        assert status.status_code == 503
        assert status.json() == {"error": "no model version is loaded yet"}
        refused = httpx.post(url + "/v1/models/fashion-mnist:predict",
                             json={"instances": [[[0.0] * 28] * 28]}, timeout=5)
        assert refused.status_code == 503
        assert not tensorflow_loaded(serve.pid)
        assert compile_workers(serve.pid) == []

        staging = repo / ".staging"
        shutil.copytree(saved_model, staging)
        staging.rename(repo / "fashion-mnist" / "1")
        wait_for(lambda: httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200,
                 seconds=120)
        answer = httpx.post(url + "/v1/models/fashion-mnist:predict",
                            json={"instances": [[[0.0] * 28] * 28]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1"
        assert len(answer.json()["predictions"][0]) == 10
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert "retrain_serving_model_compiled 1.0" in metrics  # compiled at load
        images = triton.InferInput("images", [1, 28, 28], "FP32")
        images.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
        by_grpc = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(
            "fashion-mnist", [images])
        assert by_grpc.get_response().model_version == "1"
        np.testing.assert_allclose(by_grpc.as_numpy("probabilities"),
                                   answer.json()["predictions"], atol=1e-5)
        assert tensorflow_loaded(serve.pid)
        # RETRAIN_SERVE_TF_THREADS (1) set before TensorFlow ran: one pool thread, and the
        # LiteRT converter's own pool (one per core)
        names = [(task / "comm").read_text().strip()
                 for task in Path(f"/proc/{serve.pid}/task").iterdir()]
        assert names.count("tf_Compute") == 1 + len(os.sched_getaffinity(serve.pid)), names
        wait_for(lambda: len(compile_workers(serve.pid)) == 1)
    finally:
        _stopped(serve)
    text = output.read_text()
    assert "Application startup complete." in text  # uvicorn's lines still reach the terminal
    assert [n for n in NOISE if n in text] == [], text


def test_tensorflow_that_cannot_start_is_not_blamed_on_the_version(tmp_path, saved_model, caplog):
    """A broken TensorFlow (its import fails) leaves the version loadable: it is tried again
    at the next refresh, and once TensorFlow starts the version is served."""
    from services.serving.model import ModelHolder, import_tensorflow

    shutil.copytree(saved_model, tmp_path / "1")
    attempts = []

    def start():
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
        import_tensorflow()

    holder = ModelHolder(tmp_path, start_tensorflow=start)
    with caplog.at_level("ERROR", logger="services.serving.model"):
        assert holder.refresh() is None and holder.refresh() == 1
    assert len(attempts) == 2 and holder.current.version == 1
    assert ["TensorFlow cannot start" in r.message for r in caplog.records] == [True]
    assert holder.refresh() == 1 and len(attempts) == 2  # started once, for good


def test_a_server_whose_tensorflow_cannot_start_says_it_is_not_live(tmp_path, saved_model):
    """Over HTTP and gRPC: not live, with the reason, while TensorFlow cannot start (so
    Kubernetes restarts it, as it did when the server failed at start); live again once it
    does."""
    import tritonclient.grpc as triton
    from fastapi.testclient import TestClient

    from services.serving.app import create_app
    from services.serving.model import import_tensorflow

    shutil.copytree(saved_model, tmp_path / "repo" / "fashion-mnist" / "1")
    broken = [True]

    def start():
        if broken[0]:
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
        import_tensorflow()

    app = create_app(tmp_path / "repo", poll_seconds=0.05, grpc=("127.0.0.1", 0),
                     start_tensorflow=start)
    with TestClient(app) as client:
        stub = triton.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        live = client.get("/v2/health/live")
        assert live.status_code == 503 and "TensorFlow cannot start" in live.json()["error"]
        assert stub.is_server_live() is False
        assert client.get("/v2/health/ready").status_code == 503
        broken[0] = False
        wait_for(lambda: client.get("/v2/health/ready").status_code == 200, 60)
        assert client.get("/v2/health/live").json() == {"live": True}
        assert stub.is_server_live() is True
