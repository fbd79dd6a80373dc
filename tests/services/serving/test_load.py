"""The model server on a real socket under concurrent load: micro-batching returns each
client its own answer, one bad request fails alone, swaps drop nothing, and a standard Open
Inference Protocol client (tritonclient) talks to it."""

import base64
import io
import json
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from core.http import BackgroundServer, bind
from services.serving.app import create_app
from services.serving.batching import BatchConfig
from services.trainer import export, models

pytestmark = [pytest.mark.integration]
PREDICT = "/v1/models/fashion-mnist:predict"


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Two differently initialised models, so a response shows which one answered."""
    base = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (1, 2):
        import tf_keras

        tf_keras.utils.set_random_seed(seed)
        export.export(models.build("cnn"), base / str(seed))
        paths.append(base / str(seed))
    return paths


def _serve(repo, **kwargs):
    app = create_app(repo, poll_seconds=0.05, **kwargs)
    return BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _publish(saved_model, repo, version):
    tmp = repo / "fashion-mnist" / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(saved_model, tmp)
    tmp.rename(repo / "fashion-mnist" / str(version))  # as the selector's local backend does


def _histogram(metrics_text, name):
    count = float(re.search(rf"^{name}_count (\S+)$", metrics_text, re.M).group(1))
    total = float(re.search(rf"^{name}_sum (\S+)$", metrics_text, re.M).group(1))
    return count, total


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(tmp_path, saved_models):
    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(192, 28, 28), dtype=np.uint8)
    server = _serve(repo, batching=BatchConfig(max_batch=64, max_wait=0.005))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            one_by_one = [client.post(PREDICT, json={"instances": [(images[i] / 255).tolist()]})
                          .json()["predictions"][0] for i in range(len(images))]

            def ask(i):
                if i % 2:
                    body = {"instances": [{"image_bytes": {"b64": _png(images[i])}}]}
                else:
                    body = {"instances": [(images[i] / 255).tolist()]}
                response = client.post(PREDICT, json=body)
                assert response.status_code == 200, response.text
                return response.json()["predictions"][0]

            with ThreadPoolExecutor(32) as pool:
                concurrent = list(pool.map(ask, range(len(images))))
            calls, served = _histogram(client.get("/metrics").text, "retrain_serving_batch_size")
    finally:
        server.stop()
    # each client received the probabilities of its own image, not a neighbour's in the batch
    np.testing.assert_allclose(np.array(concurrent), np.array(one_by_one), atol=2e-3)
    assert served == 2 * len(images)
    concurrent_calls = calls - len(images)  # the sequential phase made one call per request
    assert concurrent_calls < len(images) * 0.8, f"{concurrent_calls} calls for {len(images)} requests"


def test_an_undecodable_request_fails_alone_inside_a_batch(tmp_path, saved_models):
    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    good = {"instances": [{"image_bytes": {"b64": _png(np.zeros((28, 28), np.uint8))}}]}
    # a PNG whose header checks out and whose pixel data is cut: only the decoder finds out
    broken = base64.b64decode(_png(np.zeros((28, 28), np.uint8)))[:-20]
    bad = {"instances": [{"image_bytes": {"b64": base64.b64encode(broken).decode()}}]}
    server = _serve(repo, batching=BatchConfig(max_batch=64, max_wait=0.02))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda i: client.post(PREDICT, json=bad if i == 7 else good),
                                        range(48)))
    finally:
        server.stop()
    codes = [a.status_code for a in answers]
    assert codes[7] == 400 and "cannot decode image bytes" in answers[7].json()["error"]
    assert codes[:7] + codes[8:] == [200] * 47


def test_bombs_are_refused_from_their_headers_while_normal_requests_flow(tmp_path, saved_models):
    """32 concurrent requests each carrying a 20,000 x 20,000 PNG (390 kB) are 400s, the
    server's memory does not grow by the gigabytes decoding them would take, and a normal
    request sent meanwhile is answered at once."""
    from tests.bombs import png_bomb

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    bomb = {"instances": [{"image_bytes": {"b64": base64.b64encode(png_bomb()).decode()}}]}
    v2_bomb = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                           "data": [bomb["instances"][0]["image_bytes"]["b64"]]}]}
    good = {"instances": [{"image_bytes": {"b64": _png(np.zeros((28, 28), np.uint8))}}]}
    server = _serve(repo)
    before = _rss_bytes()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post(PREDICT, json=good).status_code == 200
            with ThreadPoolExecutor(33) as pool:
                bombs = [pool.submit(client.post, PREDICT, json=bomb) for _ in range(24)]
                bombs += [pool.submit(client.post, "/v2/models/fashion-mnist/infer", json=v2_bomb)
                          for _ in range(8)]
                started = time.perf_counter()
                normal = client.post(PREDICT, json=good)
                normal_seconds = time.perf_counter() - started
                answers = [f.result() for f in bombs]
    finally:
        server.stop()
    assert normal.status_code == 200 and normal_seconds < 5
    assert [a.status_code for a in answers] == [400] * 32
    assert all("declares 20000 x 20000 pixels" in a.json()["error"] for a in answers)
    assert _rss_bytes() - before < 512 * 2**20  # decoding one would take 400 MB


def test_past_the_queue_limit_requests_get_503_with_retry_after_and_nothing_waits_unbounded(
        tmp_path, saved_models):
    """While the model is busy with a full queue's worth of images, the next request is
    answered at once with 503 and Retry-After instead of waiting in memory; once the queue
    drains, requests are served again."""
    from services.serving.model import LoadedModel

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    app = create_app(repo, poll_seconds=0.05, max_queued=8)
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    images = np.random.default_rng(1).random((8, 28, 28)).tolist()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post(PREDICT, json={"instances": images[:1]}).status_code == 200
            real = app.state.holder.current
            gate = threading.Event()

            def held(**inputs):  # the real model, called once the test opens the gate
                gate.wait(30)
                return real.serve_arrays(**inputs)

            app.state.holder._current = LoadedModel(real.version, real.path, real.serve_bytes,
                                                    held)
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(client.post, PREDICT, json={"instances": images})
                deadline = time.monotonic() + 10
                while "retrain_serving_queued_images 8.0" not in client.get("/metrics").text:
                    assert time.monotonic() < deadline, "the first request never reached the model"
                    time.sleep(0.02)
                started = time.perf_counter()
                refused = client.post(PREDICT, json={"instances": images[:1]})
                refused_seconds = time.perf_counter() - started
                v2 = client.post("/v2/models/fashion-mnist/infer", json={"inputs": [
                    {"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                     "data": images[0]}]})
                gate.set()
                answered = first.result()
            app.state.holder._current = real
            again = client.post(PREDICT, json={"instances": images[:1]})
    finally:
        server.stop()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "8 images already wait for the model (the limit is 8)" in refused.json()["error"]
    assert refused_seconds < 2
    assert v2.status_code == 503 and v2.headers["retry-after"] == "1"
    assert answered.status_code == 200 and len(answered.json()["predictions"]) == 8
    assert again.status_code == 200


def test_a_request_abandoned_while_queued_does_not_stop_the_batcher(saved_models):
    """A caller cancelled while its request waits (a client gone, a server shutting down):
    the batcher drops it and goes on answering everyone else."""
    import asyncio

    from services.serving.batching import MicroBatcher
    from services.serving.model import LoadedModel, load

    real = load(saved_models[0], 1)
    gate = threading.Event()

    def held(**inputs):
        gate.wait(30)
        return real.serve_arrays(**inputs)

    gated = LoadedModel(1, real.path, real.serve_bytes, held)
    batcher = MicroBatcher(lambda: gated, BatchConfig(max_batch=1, max_wait=0))
    image = np.zeros((1, 28, 28), np.float32)

    async def scenario():
        first = asyncio.create_task(batcher.predict("arrays", image))
        await asyncio.sleep(0.2)  # the model thread now holds the first request
        abandoned = asyncio.create_task(batcher.predict("arrays", image))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        await first
        return await asyncio.wait_for(batcher.predict("arrays", image), 10)

    try:
        probs, version = asyncio.run(scenario())
    finally:
        gate.set()
        batcher.close()
    assert version == 1 and probs.shape == (1, 10)


def test_an_answer_that_is_not_a_number_fails_its_request_alone_inside_a_batch(saved_models):
    """Finiteness is checked once per model call; when it fails, the requests whose own rows
    hold NaN get the model's 500 (``NotFiniteError``, naming the version) and the others in
    the same call their answers."""
    import asyncio

    from services.serving.batching import MicroBatcher
    from services.serving.errors import NotFiniteError
    from services.serving.model import LoadedModel, load

    real = load(saved_models[0], 1)
    entered, gate = threading.Event(), threading.Event()

    def poisoned(**inputs):  # NaN for each image whose first pixel is 0.5
        entered.set()
        gate.wait(30)
        import tensorflow as tf

        out = {k: v.numpy() for k, v in real.serve_arrays(**inputs).items()}
        images = inputs["images"].numpy()
        for probs in out.values():
            probs[images[:, 0, 0] == 0.5] = np.nan
        return {k: tf.constant(v) for k, v in out.items()}

    model = LoadedModel(4, real.path, real.serve_bytes, poisoned)
    calls: list[int] = []  # images per model call
    batcher = MicroBatcher(lambda: model, BatchConfig(max_batch=16, max_wait=0),
                           lambda images, version: calls.append(images))
    good, bad = np.zeros((2, 28, 28), np.float32), np.zeros((1, 28, 28), np.float32)
    bad[0, 0, 0] = 0.5

    async def scenario():
        first = asyncio.create_task(batcher.predict("arrays", good))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        # the model thread holds the first; the next three queue behind it
        rest = [asyncio.create_task(batcher.predict("arrays", images)) for images in (good, bad, good)]
        await asyncio.sleep(0)  # each task puts its request in the queue
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        first, before, poisoned_answer, after = asyncio.run(scenario())
    finally:
        gate.set()
        batcher.close()
    assert calls == [2, 5]  # the first alone, then the three queued behind it in one call
    assert isinstance(poisoned_answer, NotFiniteError) and poisoned_answer.version == 4
    assert poisoned_answer.status == 500
    for probs, version in (first, before, after):
        assert version == 4 and probs.shape == (2, 10) and np.isfinite(probs).all()


def _rss_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.parametrize("batching", [BatchConfig(), None], ids=["batched", "unbatched"])
def test_hot_swaps_under_concurrent_load_fail_no_request(tmp_path, saved_models, batching):
    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    server = _serve(repo, batching=batching)
    body = {"instances": [{"image_bytes": {"b64": _png(np.full((28, 28), 90, np.uint8))}}]}
    stop = threading.Event()
    seen: list[list[tuple[int, int, list[float]]]] = [[] for _ in range(12)]

    def hammer(n):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post(PREDICT, json=body)
                version = int(response.headers.get("x-model-version", -1))
                seen[n].append((response.status_code, version, response.json().get("predictions")))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(12)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        for version in (2, 3):  # alternate between the two models, as promotions would
            _publish(saved_models[(version - 1) % 2], repo, version)
            deadline = time.monotonic() + 60
            while not any(v == version for s in seen for _, v, _ in s[-3:]):
                assert time.monotonic() < deadline, f"version {version} never served"
                time.sleep(0.05)
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    answers = [a for s in seen for a in s]
    assert len(answers) > 100
    assert {code for code, _, _ in answers} == {200}, "a request failed during a swap"
    for s in seen:  # each client sees versions only move forward
        versions = [v for _, v, _ in s]
        assert versions == sorted(versions)
    assert {v for _, v, _ in answers} == {1, 2, 3}
    by_version = {v: np.array(p) for _, v, p in answers}
    # the answer matches the model that says it answered: 1 and 3 are the same weights
    np.testing.assert_allclose(by_version[1], by_version[3], atol=1e-5)
    assert not np.allclose(by_version[1], by_version[2], atol=1e-5)


def test_open_inference_protocol_through_tritonclient(tmp_path, saved_models):
    import tritonclient.http as triton

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 4)
    server = _serve(repo)
    try:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fashion-mnist")
        metadata = client.get_model_metadata("fashion-mnist")
        assert metadata["versions"] == ["4"]
        assert {i["name"] for i in metadata["inputs"]} == {"image_bytes", "images"}

        images = np.random.default_rng(1).random((3, 28, 28), dtype=np.float32)
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=False)
        result = client.infer("fashion-mnist", [tensor], outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=False)])
        probs = result.as_numpy("probabilities")
        assert probs.shape == (3, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert result.get_response()["model_version"] == "4"

        encoded = np.array([_png((images[0] * 255).astype(np.uint8)).encode()], dtype=object)
        tensor = triton.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(encoded, binary_data=False)
        from_bytes = client.infer("fashion-mnist", [tensor]).as_numpy("probabilities")
        assert from_bytes.shape == (1, 10)
        np.testing.assert_allclose(from_bytes[0], probs[0], atol=0.02)  # PNG rounds to 8 bits

        with pytest.raises(triton.InferenceServerException, match="shape"):
            wrong = triton.InferInput("images", [1, 27, 28], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 27, 28), np.float32), binary_data=False)
            client.infer("fashion-mnist", [wrong])
        client.close()
    finally:
        server.stop()


def test_tritonclient_with_its_defaults_sends_and_receives_binary_tensors(tmp_path, saved_models):
    """``set_data_from_numpy(x)`` and no requested outputs (tritonclient's defaults) mean the
    binary tensor data extension both ways, for both inputs; the answers are the JSON ones,
    and an output can be asked for as JSON or binary one by one."""
    import base64

    import tritonclient.http as triton

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 2)
    server = _serve(repo)
    images = np.random.default_rng(3).random((4, 28, 28), dtype=np.float32)
    pngs = [base64.b64decode(_png((i * 255).astype(np.uint8))) for i in images]
    try:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        answers = {}
        for binary_in in (True, False):
            for binary_out in (True, False, None):  # None: no output named (binary by default)
                outputs = None if binary_out is None else [
                    triton.InferRequestedOutput("probabilities", binary_data=binary_out)]
                floats = triton.InferInput("images", list(images.shape), "FP32")
                floats.set_data_from_numpy(images, binary_data=binary_in)
                encoded = triton.InferInput("image_bytes", [len(pngs)], "BYTES")
                if binary_in:
                    encoded.set_data_from_numpy(np.array(pngs, dtype=object))
                else:  # JSON carries the image bytes base64-encoded, as V1 does
                    encoded.set_data_from_numpy(np.array(
                        [base64.b64encode(p) for p in pngs], dtype=object), binary_data=False)
                for tensor in (floats, encoded):
                    result = client.infer("fashion-mnist", [tensor], outputs=outputs)
                    binary_answer = result.get_output("probabilities").get("parameters", {})
                    assert ("binary_data_size" in binary_answer) == (binary_out is not False)
                    answers[(binary_in, binary_out, tensor.name())] = result.as_numpy("probabilities")
        client.close()
        with httpx.Client(base_url=server.url) as plain:
            expected = plain.post(PREDICT, json={"instances": images.tolist()}).json()["predictions"]
    finally:
        server.stop()
    for (_, _, name), probs in answers.items():
        assert probs.shape == (4, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, atol=1e-5 if name == "images" else 0.02)


def _binary_request(header, binary, header_length=None):
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return text + binary, {"Inference-Header-Content-Length": str(length),
                           "Content-Type": "application/octet-stream"}


@pytest.mark.parametrize("header, binary, header_length, message", [
    ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": 3136}}]}, b"\0" * 3136, 10**6,
     "Inference-Header-Content-Length 1000000 does not fit a body"),
    ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": 3136}}]}, b"\0" * 3000, None,
     "binary_data_size 3136 runs past the 3000 bytes"),
    ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": 3136}}]}, b"\0" * 3200, None,
     "the binary data is 3200 bytes but the inputs' binary_data_size add up to 3136"),
    ({"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": 3136}}]}, b"\0" * 3136, None,
     "1568 FP32 values take 6272 bytes, the binary data holds 3136"),
    ({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 9}}]}, b"\x05\0\0\0abcdefghi", None,
     "the binary data is 13 bytes but the inputs' binary_data_size add up to 9"),
    ({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 9}}]}, b"\x05\0\0\0abcde", None,
     "the shape says 2 BYTES elements, the binary data holds 1"),
    ({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 8}}]}, b"\xff\xff\xff\x7fabcd", None,
     "a BYTES element of 2147483647 bytes runs past the 4 bytes left"),
    ({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 2}}]}, b"\x05\0", None,
     "4-byte length is cut off"),
    ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": -1}}]}, b"", None,
     "binary_data_size must be a non-negative integer"),
    ({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                  "parameters": {"binary_data_size": 3136}}],
      "outputs": [{"name": "logits"}]}, b"\0" * 3136, None, "unknown output(s) ['logits']"),
])
def test_malformed_binary_requests_are_clear_400s(tmp_path, saved_models, header, binary,
                                                   header_length, message):
    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    server = _serve(repo)
    try:
        body, headers = _binary_request(header, binary, header_length)
        answer = httpx.post(server.url + "/v2/models/fashion-mnist/infer", content=body,
                            headers=headers)
        without_header = httpx.post(  # binary_data_size in a plain JSON request
            server.url + "/v2/models/fashion-mnist/infer", json=header)
        healthy = httpx.get(server.url + "/v2/health/ready").status_code
    finally:
        server.stop()
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert without_header.status_code == 400
    assert healthy == 200


def test_clients_sending_0_255_and_0_1_pixels_share_a_batch_and_each_gets_its_own_answer(
        tmp_path, saved_models):
    """The 0..255 or 0..1 decision is the request's, not the batch's: a client sending 0..255
    values batched with one sending 0..1 does not change the other's answer."""
    from services.serving.model import LoadedModel

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    app = create_app(repo, poll_seconds=0.05, batching=BatchConfig(max_batch=64, max_wait=0.05))
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    image = np.random.default_rng(12).integers(0, 256, (28, 28)).astype(np.float32)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            alone = client.post(PREDICT, json={"instances": [(image / 255).tolist()]}).json()
            real = app.state.holder.current
            gate = threading.Event()
            calls = []

            def held(**inputs):
                calls.append(int(inputs["images"].shape[0]))
                gate.wait(30)
                return real.serve_arrays(**inputs)

            app.state.holder._current = LoadedModel(real.version, real.path, real.serve_bytes, held)
            with ThreadPoolExecutor(3) as pool:
                first = pool.submit(client.post, PREDICT, json={"instances": [image.tolist()]})
                wait_until = time.monotonic() + 10
                while not calls:
                    assert time.monotonic() < wait_until
                    time.sleep(0.01)
                scaled = pool.submit(client.post, PREDICT, json={"instances": [(image / 255).tolist()]})
                raw = pool.submit(client.post, PREDICT, json={"instances": [image.tolist()]})
                time.sleep(0.3)  # both wait behind the first call: one batch
                gate.set()
                answers = [f.result().json()["predictions"][0] for f in (first, scaled, raw)]
            app.state.holder._current = real
    finally:
        server.stop()
    assert calls[1:] == [2]  # the two shared one model call
    for answer in answers:
        np.testing.assert_allclose(answer, alone["predictions"][0], atol=1e-5)
