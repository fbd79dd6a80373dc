"""Multi-worker all-reduce on 127.0.0.1, chief-only export, resuming after SIGKILL, warm
starts, and the events a training emits."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.trainer.cluster import Role, role_from_tf_config, tf_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _retrain(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "retrain.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_tf_config_roles():
    assert role_from_tf_config(None) == Role()
    second = role_from_tf_config(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert second.workers == 2 and not second.is_chief and second.distributed
    assert role_from_tf_config(tf_config(["a:1", "b:2"], 0)).is_chief
    with_chief = json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w:1"]},
                             "task": {"type": "worker", "index": 0}})
    assert not role_from_tf_config(with_chief).is_chief
    assert role_from_tf_config(with_chief).workers == 2


def test_bad_tf_config_is_refused():
    from services.trainer.cluster import ClusterError

    with pytest.raises(ClusterError, match="not a usable cluster description"):
        role_from_tf_config("{nope")
    with pytest.raises(ClusterError, match="worker:3 is not in the cluster"):
        role_from_tf_config(json.dumps({"cluster": {"worker": ["a:1"]},
                                        "task": {"type": "worker", "index": 3}}))


def test_two_workers_train_in_one_collective_group_and_only_the_chief_keeps_the_model(
        ingested, tmp_path):
    out = tmp_path / "run" / "cnn" / "model"
    done = _retrain("train", "--model", "cnn", "--dataset", ingested, "--out", str(out),
                    "--steps-per-epoch", "12", "--batch-size", "16", "--workers", "2",
                    env={"RETRAIN_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-2000:]
    chief = _last_json(done.stdout)
    other = _last_json((out.parent / "workers" / "worker-1.log").read_text())
    assert chief["workers"] == other["workers"] == 2
    # different halves of every global batch, identical weights after each all-reduce
    assert chief["weights_digest"] == other["weights_digest"]
    assert (out / "saved_model.pb").is_file() and (out / "assets.extra" / "weights.h5").is_file()
    leftovers = [p.name for p in out.parent.iterdir()]
    assert not any(name.startswith(".scratch") for name in leftovers), leftovers
    assert "backup" not in leftovers  # finished: the checkpoints are gone
    assert json.loads((out.parent / "result.json").read_text())["steps"] == 12


def test_a_corrupt_shard_fails_every_worker_quickly_with_its_name(tmp_path):
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from dataset.store import shard_paths
    from tests.conftest import write_dataset

    root = write_dataset(tmp_path / "data", train=600, test=100)
    uri = ingest(root, tmp_path / "store", fingerprint(root), dataset_key="k",
                 shard_size=200).dataset_uri
    shard = shard_paths(uri, "train")[2]
    with open(shard, "r+b") as handle:
        handle.truncate(100)
    started = time.monotonic()
    done = _retrain("train", "--model", "cnn", "--dataset", uri, "--out", str(tmp_path / "m" / "m"),
                    "--batch-size", "16", "--workers", "2", env={"RETRAIN_HOME": str(tmp_path)})
    assert done.returncode == 1 and time.monotonic() - started < 120
    assert "shard-00002.tfrecord has a different size than recorded" in done.stderr
    assert "worker 0 of 2 exited" in done.stderr or "worker 1 of 2 exited" in done.stderr
    assert "Traceback" not in done.stderr.split("Its log ends")[0]


def test_a_killed_training_resumes_from_its_last_checkpoint(ingested, tmp_path, redis_handle, r):
    from services.trainer.progress import progress_key

    out = tmp_path / "run" / "cnn" / "model"
    args = ["train", "--model", "cnn", "--dataset", ingested, "--out", str(out),
            "--steps-per-epoch", "200", "--batch-size", "16", "--checkpoint-every", "10",
            "--run-id", "resume"]
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": redis_handle.url}
    victim = subprocess.Popen([sys.executable, "-m", "retrain.cli", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = progress_key("resume", "cnn")
    deadline = time.monotonic() + 240
    seen = 0
    while seen < 30:
        assert victim.poll() is None and time.monotonic() < deadline
        raw = r.hget(key, "latest")
        seen = json.loads(raw)["step"] if raw else 0
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert any((out.parent / "backup").rglob("*")), "no checkpoint was written"

    done = _retrain(*args, env={"RETRAIN_HOME": str(tmp_path / "home"),
                                "RETRAIN_REDIS_URL": redis_handle.url})
    assert done.returncode == 0, done.stderr[-2000:]
    result = _last_json(done.stdout)
    assert seen <= result["resumed_from_step"] < 200 and result["resumed_from_step"] % 10 == 0
    history = [json.loads(x) for x in r.lrange(key + ":history", 0, -1)]
    after = [h for h in history if h["resumed_from"]]
    assert after and after[0]["step"] > result["resumed_from_step"]
    assert history[-1]["step"] == 200


def test_warm_start_loads_a_matching_champion_and_skips_a_different_variant(
        ingested, tmp_path, trained_models):
    from core.errors import ConfigurationError
    from services.trainer import models
    from services.trainer.train import TrainConfig, train, warm_start, weights_digest

    source = trained_models.weak  # a cnn exported by retrain train
    fresh = models.build("cnn")
    assert weights_digest(fresh) != source.weights_digest
    assert warm_start(fresh, source.model_uri, "cnn") == f"warm-started from {source.model_uri}"
    assert weights_digest(fresh) == source.weights_digest
    other = models.build("dropout")
    before = weights_digest(other)
    assert "trained from scratch" in warm_start(other, source.model_uri, "dropout")
    assert weights_digest(other) == before
    with pytest.raises(ConfigurationError, match="not a model exported by retrain"):
        warm_start(models.build("cnn"), str(tmp_path), "cnn")
    warmed = train(TrainConfig("cnn", ingested, tmp_path / "b" / "model", steps_per_epoch=5,
                               batch_size=32, warm_start=source.model_uri))
    assert warmed.warm_start.startswith("warm-started")


def test_model_trained_is_emitted_with_its_fields(ingested, tmp_path, r):
    from events.sinks import RedisStreamSink, read_stream
    from services.trainer.process import run
    from services.trainer.train import TrainConfig

    result = run(TrainConfig("dropout", ingested, tmp_path / "m" / "model", steps_per_epoch=6,
                             batch_size=32), "run-7", r, RedisStreamSink(r), echo=False)
    [event] = read_stream(r)
    assert event["type"] == "dev.retrain.model.trained" and event["id"] == "run-7/dropout/trained"
    data = event["data"]
    assert data["model_uri"] == result.model_uri and data["model_type"] == "dropout"
    assert data["dataset_uri"] == ingested and len(data["dataset_digest"]) == 64
    assert data["val_accuracy"] == result.val_accuracy and data["val_loss"] == result.val_loss
    assert data["workers"] == 1 and data["steps"] == 6 and data["seconds"] > 0


def test_retrain_train_refuses_a_stream_sink_without_redis(ingested, tmp_path):
    """(A training's model.trained on the selector's stream, its id and round size: the real
    training in tests/services/trainer/test_standin.py.)"""
    refused = _retrain("train", "--model", "cnn", "--dataset", ingested, "--out",
                       str(tmp_path / "n" / "model"), "--sink", "stream",
                       env={"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": ""})
    assert refused.returncode == 2 and "--sink stream needs RETRAIN_REDIS_URL" in refused.stderr


def test_a_trainer_waits_out_a_receiver_that_is_down_and_hands_its_model_over(
        ingested, tmp_path, standin_trainer):
    """The HTTP receiver is not listening when the training ends, then answers 503 once:
    the trainer keeps its finished model and waits, instead of failing after a few tries
    (and being trained again), and presents the API key when it gets through."""
    import http.server
    import threading

    from tests.conftest import free_port, wait_for

    port = free_port()
    received = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(503 if len(received) == 1 else 202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    out = tmp_path / "home" / "runs" / "run-h" / "cnn" / "model"  # where the selector looks
    trainer = subprocess.Popen(  # the test trainer: what happens after the learning is the subject
        [*standin_trainer, "train", "--model", "cnn", "--dataset", ingested,
         "--out", str(out), "--steps-per-epoch", "4", "--batch-size", "32", "--run-id", "run-h",
         "--sink", f"http://127.0.0.1:{port}/events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_REDIS_URL": "",
             "RETRAIN_API_KEYS": "sender-key"})
    try:
        wait_for(lambda: (out.parent / "result.json").is_file() or trainer.poll() is not None, 240)
        time.sleep(6)  # longer than a handful of quick retries take
        assert trainer.poll() is None, "the trainer gave up while the receiver was down"
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            stdout, stderr = trainer.communicate(timeout=60)
        finally:
            server.shutdown()
            server.server_close()
    finally:
        trainer.kill()
    assert trainer.returncode == 0, stderr[-3000:]
    assert len(received) == 2  # the 503, then the delivery
    headers, body = received[-1]
    assert headers["Authorization"] == "Bearer sender-key"
    assert headers["ce-type"] == "dev.retrain.model.trained" and headers["ce-id"] == "run-h/cnn/trained"
    assert json.loads(body)["model_uri"] == str(out)
    assert "cannot send run-h/cnn/trained yet" in stderr
