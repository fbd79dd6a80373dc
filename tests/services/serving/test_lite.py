"""Every served version is compiled for LiteRT and warmed while it loads, before it takes
traffic (``compile_at_load``), or, the other way, once it has answered ``compile_after`` model
calls: the compiled model must give TensorFlow's probabilities (to float32 rounding) for every
batch size, and a model LiteRT cannot compile is answered by TensorFlow."""

import base64
import io
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import numpy as np
import pytest
from PIL import Image

from core.http import BackgroundServer, bind
from services.serving.app import create_app
from services.serving.batching import BatchConfig
from services.serving.lite import SIZES, CompiledModel, calls
from services.serving.model import ModelHolder, import_tensorflow, load
from tests.conftest import wait_for

tf = import_tensorflow()  # (the server imports it with its first version)

pytestmark = [pytest.mark.integration]
PREDICT = "/v1/models/fashion-mnist:predict"


def _reference(model, images):
    return model.serve_arrays(images=tf.constant(images))["probabilities"].numpy()


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_batch_runs_unpadded_on_the_interpreters_kept():
    assert SIZES == (1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40, 48, 56, 64)
    assert [calls(n) for n in (1, 8, 9, 13, 16, 17, 63, 64, 75, 130)] == [
        [1], [8], [8, 1], [8, 5], [16], [16, 1], [56, 7], [64], [64, 8, 3], [64, 64, 2]]
    for n in range(1, 300):  # every image once, on a kept size, at most two calls past the 64s
        sizes = calls(n)
        assert sum(sizes) == n and set(sizes) <= set(SIZES) and len(sizes) <= n // 64 + 2


def test_the_compiled_model_answers_as_tensorflow_for_every_batch_size(saved_model):
    model = load(saved_model, 1)
    compiled = CompiledModel.compile(saved_model)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 9, 13, 64, 100):  # one call, two, several
        images = rng.random((n, 28, 28), dtype=np.float32)
        answer = compiled.predict(images)
        assert answer.shape == (n, 10)
        np.testing.assert_allclose(answer, _reference(model, images), rtol=1e-5, atol=1e-6)
    pixels = rng.integers(0, 256, (4, 28, 28)).astype(np.float32)  # 0..255: scaled in the graph
    np.testing.assert_allclose(compiled.predict(pixels), _reference(model, pixels), rtol=1e-5, atol=1e-6)
    # threads at once (the unbatched server calls from a thread pool): each its own answer
    batches = [rng.random((1 + i % 5, 28, 28), dtype=np.float32) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(compiled.predict, batches))
    for batch, answer in zip(batches, answers):
        np.testing.assert_allclose(answer, _reference(model, batch), rtol=1e-5, atol=1e-6)


def _serve(repo, **kwargs):
    app = create_app(repo, poll_seconds=0.05, **kwargs)
    return app, BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()


def test_a_busy_version_is_compiled_and_answers_as_before(tmp_path, saved_model):
    shutil.copytree(saved_model, tmp_path / "repo" / "fashion-mnist" / "1")
    images = np.random.default_rng(1).integers(0, 256, (96, 28, 28), dtype=np.uint8)
    app, server = _serve(tmp_path / "repo", batching=BatchConfig(), compile_after=20)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            def ask(i):
                r = client.post(PREDICT, json={"instances": [{"image_bytes": {"b64": _png(images[i])}}]})
                assert r.status_code == 200, r.text
                return r.json()["predictions"][0]

            assert "retrain_serving_model_compiled 0.0" in client.get("/metrics").text
            before = [ask(i) for i in range(len(images))]  # TensorFlow, then compiling meanwhile
            served = app.state.holder.current
            wait_for(lambda: served.compiled is not None, seconds=60)
            assert "retrain_serving_model_compiled 1.0" in client.get("/metrics").text
            with ThreadPoolExecutor(16) as pool:  # concurrent calls share the interpreters
                after = list(pool.map(ask, range(len(images))))
    finally:
        server.stop()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def odd_model(path):
    """A SavedModel with both signatures whose array signature has string ops inside:
    LiteRT's built-in ops lack them."""
    class Odd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            return {"probabilities": tf.zeros([tf.shape(image_bytes)[0], 10])}

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
        def serve_arrays(self, images):
            text = tf.strings.as_string(tf.reduce_sum(images, [1, 2]))
            length = tf.cast(tf.strings.length(tf.strings.regex_replace(text, "0", "")), tf.float32)
            return {"probabilities": tf.tile(length[:, None], [1, 10]) / 100.0}

    odd = Odd()
    tf.saved_model.save(odd, str(path), signatures={
        "serving_default": odd.serve_bytes.get_concrete_function(),
        "predict_images": odd.serve_arrays.get_concrete_function()})


@pytest.mark.parametrize("when", [{"compile_at_load": True, "compile_after": 2},
                                  {"compile_after": 2}], ids=["at-load", "after-calls"])
def test_a_model_litert_cannot_compile_stays_on_tensorflow(tmp_path, caplog, when):
    """Refused once, for good: the calls that follow never convert it again (in the
    server's own process, under traffic)."""
    odd_model(tmp_path / "repo" / "fashion-mnist" / "1")
    with caplog.at_level(logging.WARNING, logger="services.serving.model"):
        app, server = _serve(tmp_path / "repo", **when)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                answers = [client.post(PREDICT, json={"instances": [np.full((28, 28), 0.5).tolist()]})
                           for _ in range(4)]
                wait_for(lambda: "stays on TensorFlow" in caplog.text, seconds=60)
                again = client.post(PREDICT, json={"instances": [np.full((28, 28), 0.5).tolist()]})
                wait_for(lambda: not any(t.name.startswith("compile-v")
                                         for t in threading.enumerate()), seconds=60)
        finally:
            server.stop()
    assert caplog.text.count("stays on TensorFlow") == 1, caplog.text
    assert [a.status_code for a in answers] == [200] * 4 and again.status_code == 200
    assert again.json()["predictions"] == answers[0].json()["predictions"]
    assert app.state.holder.current.compiled is None


def test_a_replacing_version_litert_cannot_compile_apart_is_served_by_tensorflow(
        tmp_path, saved_model, caplog):
    """Compiled by the compile worker (another version serves meanwhile): the converter's
    refusal comes back as the reason in the log, and TensorFlow answers."""
    repo = tmp_path / "fashion-mnist"
    shutil.copytree(saved_model, repo / "1")
    with closing(ModelHolder(repo, compile_at_load=True)) as holder:
        assert holder.refresh() == 1 and holder.compiled
        odd_model(repo / "2")
        with caplog.at_level(logging.WARNING, logger="services.serving.model"):
            assert holder.refresh() == 2
    assert holder.current.compiled is None
    assert "version 2 stays on TensorFlow: LiteRT cannot compile it:" in caplog.text
    answer = holder.current.predict_arrays(np.full((1, 28, 28), 0.5, np.float32))
    assert answer.shape == (1, 10)


def test_a_version_replacing_a_served_one_is_compiled_before_it_answers(tmp_path, saved_model):
    """Compiled after its calls (not at load), the first version is served at once; the next
    one, taking traffic from a compiled one, is compiled before the swap: its first answer is
    LiteRT's."""
    repo = tmp_path / "fashion-mnist"
    shutil.copytree(saved_model, repo / "1")
    holder = ModelHolder(repo, compile_after=20)
    assert holder.refresh() == 1 and not holder.compiled  # nothing to wait for: served now
    shutil.copytree(saved_model, repo / "2")
    (repo / "2" / "assets.extra").mkdir(exist_ok=True)
    (repo / "2" / "assets.extra" / "other").write_text("other files: loaded, not relabelled")
    assert holder.refresh() == 2 and holder.loads == 2
    assert holder.compiled  # before any call reached it
    images = np.random.default_rng(2).random((5, 28, 28), np.float32)
    np.testing.assert_allclose(holder.current.predict_arrays(images),
                               _reference(holder.current, images), rtol=1e-5, atol=1e-6)


def test_compiled_at_load_every_version_answers_on_litert_from_its_first_call(tmp_path,
                                                                              saved_model):
    """The first version too: compiled from the signature already loaded (no second load of
    its files) and warmed at every batch size before the holder serves it. (The next ones,
    compiled by the compile worker: test_compile_worker.py.)"""
    repo = tmp_path / "fashion-mnist"
    shutil.copytree(saved_model, repo / "1")
    with closing(ModelHolder(repo, compile_at_load=True)) as holder:
        assert not holder.ready
        assert holder.refresh() == 1 and holder.ready and holder.compiled
    compiled = holder.current.compiled
    assert sorted(compiled._interpreters) == list(SIZES)  # no interpreter made in a request
    images = np.random.default_rng(3).random((11, 28, 28), np.float32)
    np.testing.assert_allclose(holder.current.predict_arrays(images),
                               _reference(holder.current, images), rtol=1e-5, atol=1e-6)


def test_the_server_is_not_ready_until_its_first_version_is_compiled(tmp_path, saved_model):
    """What a readiness probe (Knative's, KServe's) reads: 503 until a version is served, and
    the first 200 already on LiteRT."""
    repo = tmp_path / "repo"
    (repo / "fashion-mnist").mkdir(parents=True)
    app, server = _serve(repo, compile_at_load=True)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/v2/health/ready").status_code == 503
            shutil.copytree(saved_model, repo / "fashion-mnist" / "1")
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200, seconds=60)
            assert app.state.holder.current.compiled is not None
            assert "retrain_serving_model_compiled 1.0" in client.get("/metrics").text
            answer = client.post(PREDICT, json={"instances": [np.full((28, 28), 0.5).tolist()]})
    finally:
        server.stop()
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
