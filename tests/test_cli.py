"""Bad input at the command line: one clear line naming the problem, a non-zero exit."""

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _retrain(*args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "retrain.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_unreachable_redis_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    done = _retrain("status", env={"RETRAIN_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                                   "RETRAIN_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_redis_password_never_reaches_the_terminal(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    told = {}
    for url in (f"redis://:Sup3rSecretPw@127.0.0.1:{port}/0",
                f"redis://admin:Sup3rSecretPw@127.0.0.1:{port}/0", "http://:Sup3rSecretPw@nope"):
        done = _retrain("status", env={"RETRAIN_REDIS_URL": url, "RETRAIN_HOME": str(tmp_path)})
        assert done.returncode != 0 and "Sup3rSecretPw" not in done.stdout + done.stderr
        told[url] = done.stderr
    assert f"redis://admin:***@127.0.0.1:{port}/0" in told[f"redis://admin:Sup3rSecretPw@127.0.0.1:{port}/0"]
    assert "RETRAIN_REDIS_URL" in told["http://:Sup3rSecretPw@nope"]


def test_bad_redis_url_setting(tmp_path):
    done = _retrain("status", env={"RETRAIN_REDIS_URL": "http://nope", "RETRAIN_HOME": str(tmp_path)})
    assert done.returncode == 2 and "RETRAIN_REDIS_URL" in done.stderr


def test_port_in_use(tmp_path, redis_handle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = _retrain("serve", "--model-repo", str(tmp_path), "--port", str(port), "--grpc-port", "0",
                        env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr
    with socket.socket() as s:  # the gRPC port taken: said before anything starts
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = _retrain("serve", "--model-repo", str(tmp_path), "--port", "0",
                        "--grpc-port", str(port), env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert f"model server (gRPC): port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_said_before_tensorflow_loads(tmp_path):
    """Where TensorFlow cannot even be imported, a taken port is still the error: nothing
    slow runs before the ports are checked. (With both free, a server with no version starts
    without TensorFlow at all: tests/test_lazy_tensorflow.py.)"""
    blocked = tmp_path / "no-tensorflow" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('TensorFlow is not loaded yet')\n")
    env = {"RETRAIN_HOME": str(tmp_path), "PYTHONPATH": str(blocked.parent)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = _retrain("serve", "--model-repo", str(tmp_path), "--port", str(port),
                         "--grpc-port", "0", env=env)
        grpc_taken = _retrain("serve", "--model-repo", str(tmp_path), "--port", "0",
                              "--grpc-port", str(port), env=env)
    assert f"port {port} on 127.0.0.1 is already in use" in taken.stderr, taken.stderr
    assert "model server (gRPC): port" in grpc_taken.stderr, grpc_taken.stderr
    assert "TensorFlow is not loaded yet" not in taken.stderr + grpc_taken.stderr
    assert taken.returncode != 0 and grpc_taken.returncode != 0


def test_missing_and_corrupt_idx_files(tmp_path, redis_handle):
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "data", train=100, test=50)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    done = _retrain("run", "--data", str(root), "--models", "none", "--json",
                    env={"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url})
    assert done.returncode == 1
    summary = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    assert "t10k-images-idx3-ubyte.gz: missing" in summary["error"]
    assert "train-labels-idx1-ubyte.gz" in summary["error"]
    assert not (tmp_path / "home" / "store" / "datasets").exists()
    # `retrain ingest` lists the same problems, in words, not "failed: miss: ... -> None"
    told = _retrain("ingest", "--data", str(root), env={"RETRAIN_HOME": str(tmp_path / "home"),
                                                        "RETRAIN_REDIS_URL": redis_handle.url})
    assert told.returncode == 1 and "-> None" not in told.stdout
    assert "t10k-images-idx3-ubyte.gz: missing" in told.stdout
    assert "train-labels-idx1-ubyte.gz" in told.stdout


def test_run_json_reports_a_miss_then_a_hit(tmp_path, redis_handle, r):
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "data", train=100, test=50)
    env = {"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url}
    import json

    first = json.loads(_retrain("run", "--data", str(root), "--models", "none", "--json",
                                env=env).stdout.strip().splitlines()[-1])
    second = json.loads(_retrain("run", "--data", str(root), "--models", "none", "--json",
                                 env=env).stdout.strip().splitlines()[-1])
    assert first["cache"]["hit"] is False and second["cache"]["hit"] is True
    assert second["cache"]["reason"].startswith("hit: same content digest")
    assert first["dataset_uri"] == second["dataset_uri"]
    assert [s["name"] for s in second["steps"]] == ["fingerprint", "check_cache", "ingest",
                                                    "validate"]
    assert second["steps"][2]["status"] == "skipped"
    assert second["validation"]["status"] == "pass" and second["validation"]["cached"] is True
    assert all(isinstance(s["seconds"], float) for s in second["steps"])
    assert all(s["started_at"] <= s["ended_at"] for s in second["steps"])
    assert second["steps"][0]["digest"] == first["digest"]  # each step's outputs are recorded
    assert second["steps"][1]["key"] == first["cache"]["key"]
    status = json.loads(_retrain("status", "--json", env=env).stdout)
    assert [r["run_id"] for r in status["runs"]] == [second["run_id"], first["run_id"]]
    assert [e["hits"] for e in status["cache"]] == [1] and status["cache_entries"] == 1
    assert status["champion"] is None
    table = _retrain("status", env=env)
    assert table.returncode == 0 and second["run_id"] in table.stdout and "none yet" in table.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("nosuch",), "No such command 'nosuch'"),
    (("run", "--data", ".", "--epochs", "x"), "Invalid value for '--epochs'"),
    (("run", "--data", ".", "--train-cache", "sometimes"),
     "unknown cache policy 'sometimes' (expected exact, max-age=DURATION or off)"),
    (("run", "--data", ".", "--cache-policy", "off"), "unknown cache policy 'off'"),
])
def test_usage_errors_are_one_message_and_exit_2(tmp_path, args, message):
    done = _retrain(*args, env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_train_refuses_at_once_a_model_the_selector_would_refuse(tmp_path):
    """--out outside the runs folder with a --sink: the selector would refuse the model it
    trained, so the command says so before training (exit 2), instead of after."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "metadata.json").write_text("{}")
    out = tmp_path / "elsewhere" / "model"
    started = time.monotonic()
    done = _retrain("train", "--model", "cnn", "--dataset", str(dataset), "--out", str(out),
                    "--sink", "http://127.0.0.1:9/events",
                    env={"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": ""},
                    timeout=60)
    told = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert f"--out {out}: outside the runs folder {tmp_path / 'home' / 'runs'}" in told
    assert "the selector would refuse its model.trained" in told and "Traceback" not in told
    assert not out.parent.exists() and time.monotonic() - started < 20  # no TensorFlow


def test_publish_validates_the_payload(tmp_path):
    done = _retrain("publish", "dev.retrain.dataset.updated", "--data", '{"trigger": "manual"}',
                    env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode != 0 and "uri" in done.stderr and "Field required" in done.stderr
    done = _retrain("publish", "dev.retrain.nope", "--data", "{}", env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode != 0 and "unknown event type" in done.stderr


@pytest.mark.integration
def test_publish_says_when_the_trigger_dropped_the_event_as_a_duplicate(tmp_path, r):
    from core.http import BackgroundServer, bind
    from events.dedup import Deduplicator
    from workflows.trigger import create_app

    received = []
    server = BackgroundServer(create_app(Deduplicator(r, 60, "trigger"), received.append),
                              bind("127.0.0.1", 0, "trigger"), "trigger").start()
    try:
        args = ("publish", "dataset.updated", "--data", '{"uri": "/d"}', "--id", "once",
                "--sink", server.url + "/events")
        first = _retrain(*args, env={"RETRAIN_HOME": str(tmp_path)})
        again = _retrain(*args, env={"RETRAIN_HOME": str(tmp_path)})
    finally:
        server.stop()
    assert first.returncode == 0 and "published dev.retrain.dataset.updated id=once" in first.stderr
    assert again.returncode == 0 and "dropped it as a duplicate" in again.stderr
    assert [e.id for e in received] == ["once"]
    assert received[0].data.origin.kind == "manual"  # the lineage says: published by hand


def test_seed_writes_a_stand_in_offline_and_says_so(tmp_path):
    from dataset import idx
    from dataset.layout import BASE_FILES

    done = _retrain("seed", "--out", str(tmp_path / "fm"), "--train-size", "50", "--test-size", "20",
                    env={"RETRAIN_HOME": str(tmp_path), "RETRAIN_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "GENERATED STAND-IN DATA" in done.stderr
    assert idx.image_count(tmp_path / "fm" / BASE_FILES["train"][0]) == 50
    assert len(idx.read_labels(tmp_path / "fm" / BASE_FILES["test"][1])) == 20
    bad = _retrain("seed", "--out", str(tmp_path / "x"), "--train-size", "0",
                   env={"RETRAIN_HOME": str(tmp_path), "RETRAIN_OFFLINE": "1"})
    assert bad.returncode == 2 and "--train-size" in bad.stderr


def test_select_rollback_without_a_previous_champion(tmp_path, redis_handle, r):
    done = _retrain("select", "rollback", env={"RETRAIN_HOME": str(tmp_path),
                                                "RETRAIN_REDIS_URL": redis_handle.url})
    assert done.returncode == 1
    assert "no previous champion to roll back to (no champion at all yet)" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("env, message, code", [
    ({"RETRAIN_PROMOTION_BACKEND": "kserve", "KUBERNETES_SERVICE_HOST": ""},
     "not running in a cluster: KUBERNETES_SERVICE_HOST is not set", 1),
    ({"RETRAIN_PROMOTION_BACKEND": "kserve", "RETRAIN_KSERVE_CANARY_STEPS": "10,x"},
     "RETRAIN_KSERVE_CANARY_STEPS", 2),
    ({"RETRAIN_PROMOTION_BACKEND": "kserve", "RETRAIN_KSERVE_ROLLOUT": "canary",
      "RETRAIN_KSERVE_CANARY_STEPS": "50,10", "RETRAIN_KUBE_API_URL": "http://127.0.0.1:9"},
     "canary steps must rise within 1..99", 2),
    ({"RETRAIN_PROMOTION_BACKEND": "triton"}, "RETRAIN_PROMOTION_BACKEND", 2),
    ({"RETRAIN_ROUND_QUORUM": "0"}, "RETRAIN_ROUND_QUORUM", 2),
])
def test_selector_configuration_errors(tmp_path, redis_handle, env, message, code):
    done = _retrain("select", "rollback", env={"RETRAIN_HOME": str(tmp_path),
                                                "RETRAIN_REDIS_URL": redis_handle.url, **env})
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == code, output
    assert message in output
    assert "Traceback" not in done.stderr
