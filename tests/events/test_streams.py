"""Consuming the Redis stream of events with a consumer group, on real Redis; and the selector
fed from it end to end (a real model, evaluated for real, promoted into the repository)."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from events import EventType, make_event
from events.payloads import ModelTrained
from events.sinks import RedisStreamSink, read_stream
from events.streams import StreamConsumer

pytestmark = pytest.mark.integration


def _event(n):
    return make_event("dataset.updated", {"uri": f"/d/{n}"}, source="test/streams", id=f"s{n}")


def test_each_entry_is_handled_once_and_acknowledged(r):
    sink = RedisStreamSink(r, "t:events")
    for n in range(3):
        sink.send(_event(n))
    seen = []
    consumer = StreamConsumer(r, "t:events", "g", "c1", seen.append, block_ms=10)
    assert consumer.poll() == 3 and [e.id for e in seen] == ["s0", "s1", "s2"]
    assert consumer.poll() == 0
    assert r.xpending("t:events", "g")["pending"] == 0
    sink.send(_event(3))
    assert StreamConsumer(r, "t:events", "g", "c2", seen.append, block_ms=10).poll() == 1


def test_an_entry_whose_consumer_failed_is_claimed_by_another(r):
    RedisStreamSink(r, "t:events").send(_event(9))

    def crash(event):
        raise RuntimeError("consumer died mid-way")

    with pytest.raises(RuntimeError):
        StreamConsumer(r, "t:events", "g", "dead", crash, block_ms=10).poll()
    assert r.xpending("t:events", "g")["pending"] == 1
    seen = []
    survivor = StreamConsumer(r, "t:events", "g", "alive", seen.append, claim_after=0.2, block_ms=10)
    assert survivor.poll() == 0  # not idle long enough yet
    time.sleep(0.3)
    assert survivor.poll() == 1 and seen[0].id == "s9"
    assert r.xpending("t:events", "g")["pending"] == 0


def test_an_entry_that_always_fails_goes_to_the_dead_letters_and_blocks_nothing(r):
    RedisStreamSink(r, "t:events").send(_event(1))

    def crash(event):
        raise RuntimeError("poison")

    consumer = StreamConsumer(r, "t:events", "g", "c", crash, claim_after=0.0, block_ms=10,
                              max_deliveries=3)
    for _ in range(3):  # the first delivery and two claims
        with pytest.raises(RuntimeError, match="poison"):
            consumer.poll()
    RedisStreamSink(r, "t:events").send(_event(2))
    seen = []
    healthy = StreamConsumer(r, "t:events", "g", "c", seen.append, claim_after=0.0, block_ms=10,
                             max_deliveries=3)
    assert healthy.poll() == 1 and [e.id for e in seen] == ["s2"]
    [(_id, dead)] = r.xrange("t:events:dead")
    assert b"s1" in dead[b"event"] and dead[b"reason"] == b"handling failed 3 times"
    assert r.xpending("t:events", "g")["pending"] == 0


def test_select_serve_promotes_a_model_trained_read_from_the_stream(r, redis_handle, tmp_path,
                                                                    saved_model):
    from dataset.fingerprint import fingerprint
    from dataset.ingest import ingest
    from tests.conftest import free_port, write_dataset

    home = tmp_path / "home"  # the selector judges only the project's models and datasets
    root = write_dataset(tmp_path / "data", train=200, test=100)
    ours = ingest(root, home / "store", fingerprint(root), dataset_key="k")
    model = home / "runs" / "r1" / "cnn" / "model"
    shutil.copytree(saved_model, model)
    env = {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_REDIS_URL": redis_handle.url}
    proc = subprocess.Popen([sys.executable, "-m", "retrain.cli", "select", "serve", "--stream",
                             "--port", str(free_port())], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        trained = make_event(EventType.MODEL_TRAINED, ModelTrained(
            run_id="r1", model_type="cnn", model_uri=str(model), dataset_uri=ours.dataset_uri,
            dataset_digest=ours.digest, val_accuracy=0.1, val_loss=2.3, seconds=1.0), source="test")
        RedisStreamSink(r).send(trained)
        RedisStreamSink(r).send(trained)  # a duplicate: judged once
        served = home / "models" / "fashion-mnist" / "1" / "saved_model.pb"
        deadline = time.monotonic() + 120
        while not served.exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the stream's model.trained was not promoted"
            time.sleep(0.2)

        def decisions():
            return [e for e in read_stream(r) if e["type"].endswith(("model.promoted", "model.rejected"))]

        while not decisions():  # the first model is served first, scored after
            assert time.monotonic() < deadline, "no decision was emitted"
            time.sleep(0.2)
        time.sleep(1.0)  # time enough for a duplicate to be (wrongly) judged too
        assert len(decisions()) == 1 and decisions()[0]["type"].endswith("model.promoted")
        assert decisions()[0]["data"]["version"] == 1
        assert not (home / "models" / "fashion-mnist" / "2").exists()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]
