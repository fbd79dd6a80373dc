"""The model server as KServe's predictor runs it: ``retrain serve --model-dir /mnt/models``,
where the storage initializer has copied one release (``<version>/saved_model.pb``)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

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
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]
    assert "version 7 compiled for LiteRT" in output
    # LiteRT's own line ("INFO: Created TensorFlow Lite XNNPACK delegate") is kept off the terminal
    assert "TensorFlow Lite" not in output, output[-3000:]
