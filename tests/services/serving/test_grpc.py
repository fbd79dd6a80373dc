"""The Open Inference Protocol over gRPC on a real port: tritonclient.grpc with its defaults,
both inputs, with and without an API key; answers equal to the HTTP API's; clear statuses for
bad requests; a hot swap under concurrent gRPC load fails nothing."""

import base64
import importlib.metadata
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest

from core.http import BackgroundServer, bind
from services.serving.app import create_app
from services.serving.limits import RateLimiter
from tests.services.serving.test_load import _png, _publish, saved_models  # noqa: F401

pytestmark = [pytest.mark.integration]
PREDICT = "/v1/models/fashion-mnist:predict"


def _serve(repo, **kwargs):
    app = create_app(repo, poll_seconds=0.05, grpc=("127.0.0.1", 0), **kwargs)
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "model-server").start()
    return server, f"127.0.0.1:{app.state.grpc_port}"


@pytest.fixture
def served(tmp_path, saved_models):  # noqa: F811
    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 3)
    limiter = RateLimiter(anon_rate=0, keyed_rate=0, api_keys=("grpc-key",))
    server, target = _serve(repo, limiter=limiter)
    yield server, target, repo
    server.stop()


def test_tritonclient_grpc_with_its_defaults_for_both_inputs_with_and_without_a_key(served):
    import tritonclient.grpc as triton

    server, target, _repo = served
    images = np.random.default_rng(5).random((3, 28, 28), dtype=np.float32)
    pngs = [base64.b64decode(_png((i * 255).astype(np.uint8))) for i in images]
    with httpx.Client(base_url=server.url) as plain:
        expected = np.array(plain.post(PREDICT, json={"instances": images.tolist()})
                            .json()["predictions"])
    client = triton.InferenceServerClient(target)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fashion-mnist") and not _ready(client, "other")
        server_metadata = client.get_server_metadata()
        assert "binary_tensor_data" in server_metadata.extensions
        assert server_metadata.version == importlib.metadata.version("retrain")
        metadata = client.get_model_metadata("fashion-mnist")
        assert list(metadata.versions) == ["3"]
        assert {i.name for i in metadata.inputs} == {"image_bytes", "images"}
        for headers in (None, {"authorization": "Bearer grpc-key"}):
            floats = triton.InferInput("images", list(images.shape), "FP32")
            floats.set_data_from_numpy(images)
            encoded = triton.InferInput("image_bytes", [len(pngs)], "BYTES")
            encoded.set_data_from_numpy(np.array(pngs, dtype=object))
            by_floats = client.infer("fashion-mnist", [floats], headers=headers)
            by_bytes = client.infer("fashion-mnist", [encoded], headers=headers)
            assert by_floats.get_response().model_version == "3"
            np.testing.assert_allclose(by_floats.as_numpy("probabilities"), expected, atol=1e-5)
            np.testing.assert_allclose(by_bytes.as_numpy("probabilities"), expected, atol=0.02)
        with pytest.raises(triton.InferenceServerException) as refused:
            client.infer("fashion-mnist", [floats], headers={"authorization": "Bearer wrong"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "not one of RETRAIN_API_KEYS" in refused.value.message()
        with pytest.raises(triton.InferenceServerException) as missing:
            client.infer("other", [floats])
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        wrong = triton.InferInput("images", [1, 27, 28], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 27, 28), np.float32))
        with pytest.raises(triton.InferenceServerException) as bad:
            client.infer("fashion-mnist", [wrong])
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "shape [n, 28, 28], got [1, 27, 28]" in bad.value.message()
    finally:
        client.close()


def _ready(client, name):
    import tritonclient.grpc as triton

    try:
        return client.is_model_ready(name)
    except triton.InferenceServerException:
        return False


def test_typed_contents_and_malformed_raw_contents(served):
    """A client that puts the data in the typed contents (no raw bytes) is answered too; raw
    contents that do not add up are INVALID_ARGUMENT naming the problem, never a crash."""
    from services.serving.grpc_protocol import Stub
    from services.serving.grpc_protocol import messages as protos

    _server, target, _repo = served
    image = np.random.default_rng(6).random((1, 28, 28), dtype=np.float32)
    tensor = protos.ModelInferRequest.InferInputTensor
    with grpc.insecure_channel(target) as channel:
        stub = Stub(channel)
        typed = stub.ModelInfer(protos.ModelInferRequest(model_name="fashion-mnist", inputs=[
            tensor(name="images", datatype="FP32", shape=[1, 28, 28],
                   contents=protos.InferTensorContents(fp32_contents=image.ravel().tolist()))]))
        raw = stub.ModelInfer(protos.ModelInferRequest(
            model_name="fashion-mnist",
            inputs=[tensor(name="images", datatype="FP32", shape=[1, 28, 28])],
            raw_input_contents=[image.astype("<f4").tobytes()]))
        assert np.frombuffer(typed.raw_output_contents[0], "<f4").shape == (10,)
        assert typed.raw_output_contents == raw.raw_output_contents
        # an encoded image in the typed bytes_contents, as some clients send it
        png = base64.b64decode(_png(np.full((28, 28), 90, np.uint8)))
        typed_png = stub.ModelInfer(protos.ModelInferRequest(model_name="fashion-mnist", inputs=[
            tensor(name="image_bytes", datatype="BYTES", shape=[1],
                   contents=protos.InferTensorContents(bytes_contents=[png]))]))
        raw_png = stub.ModelInfer(protos.ModelInferRequest(
            model_name="fashion-mnist",
            inputs=[tensor(name="image_bytes", datatype="BYTES", shape=[1])],
            raw_input_contents=[len(png).to_bytes(4, "little") + png]))
        assert typed_png.raw_output_contents == raw_png.raw_output_contents
        problems = {
            "two raw contents for one input": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(name="images", datatype="FP32",
                                                           shape=[1, 28, 28])],
                raw_input_contents=[b"\0" * 3136, b"\0"]),
            "short FP32 data": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(name="images", datatype="FP32",
                                                           shape=[1, 28, 28])],
                raw_input_contents=[b"\0" * 100]),
            "a BYTES length past the data": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(name="image_bytes", datatype="BYTES",
                                                           shape=[1])],
                raw_input_contents=[b"\xff\xff\0\0abc"]),
            "no input": protos.ModelInferRequest(model_name="fashion-mnist"),
            "a UINT8 content of 300": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(
                    name="images", datatype="UINT8", shape=[1, 28, 28],
                    contents=protos.InferTensorContents(uint_contents=[300] * 784))]),
            "a NaN in the typed FP32 contents": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(
                    name="images", datatype="FP32", shape=[1, 28, 28],
                    contents=protos.InferTensorContents(
                        fp32_contents=[0.0] * 100 + [float("nan")] + [0.0] * 683))]),
            "an unknown output": protos.ModelInferRequest(
                model_name="fashion-mnist", inputs=[tensor(name="images", datatype="FP32",
                                                           shape=[1, 28, 28])],
                raw_input_contents=[b"\0" * 3136],
                outputs=[protos.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
        }
        messages = {}
        for why, request in problems.items():
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(request)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            messages[why] = failed.value.details()
        live = stub.ServerLive(protos.ServerLiveRequest()).live
    assert "2 raw_input_contents for 1 inputs" in messages["two raw contents for one input"]
    assert "3136 bytes, the binary data holds 100" in messages["short FP32 data"]
    assert "runs past" in messages["a BYTES length past the data"]
    assert "non-empty" in messages["no input"]
    assert "UINT8 contents hold a value out of its range" in messages["a UINT8 content of 300"]
    assert "unknown output(s) ['logits']" in messages["an unknown output"]
    assert messages["a NaN in the typed FP32 contents"] == "inputs[0] element 100: not a number"
    assert live


@pytest.mark.slow
def test_hot_swap_under_grpc_load_fails_nothing_and_answers_match_one_by_one(
        served, saved_models):  # noqa: F811
    import tritonclient.grpc as triton

    _server, target, repo = served
    images = np.random.default_rng(7).random((8, 28, 28), dtype=np.float32)
    stop = threading.Event()
    seen = []
    lock = threading.Lock()

    def hammer(n):
        client = triton.InferenceServerClient(target)
        image = images[n:n + 1]
        try:
            while not stop.is_set():
                tensor = triton.InferInput("images", [1, 28, 28], "FP32")
                tensor.set_data_from_numpy(image)
                try:
                    result = client.infer("fashion-mnist", [tensor])
                    answer = (n, int(result.get_response().model_version),
                              result.as_numpy("probabilities")[0])
                except triton.InferenceServerException as exc:
                    answer = (n, -1, str(exc))
                with lock:
                    seen.append(answer)
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(hammer, n) for n in range(8)]
        time.sleep(1.0)
        _publish(saved_models[1], repo, 4)  # a promotion while the load runs
        deadline = time.monotonic() + 60
        while not any(v == 4 for _, v, _ in seen[-8:]):
            assert time.monotonic() < deadline, "version 4 never served"
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        for future in futures:
            future.result()
    failures = [a for a in seen if a[1] == -1]
    assert not failures, failures[:3]
    assert {v for _, v, _ in seen} == {3, 4} and len(seen) > 50
    # each answer is the one-by-one answer of the version that says it answered
    from services.serving.model import load

    for version, path in ((3, saved_models[0]), (4, saved_models[1])):
        model = load(path, version)
        alone = model.predict_arrays(images)
        for n, v, probs in seen:
            if v == version:
                np.testing.assert_allclose(probs, alone[n], atol=1e-5)


def test_a_rate_limited_grpc_call_says_when_to_come_back(tmp_path, saved_models):  # noqa: F811
    """RESOURCE_EXHAUSTED carries the Retry-After the HTTP API sends, as trailing metadata."""
    from services.serving.grpc_protocol import Stub
    from services.serving.grpc_protocol import messages as protos

    repo = tmp_path / "repo"
    _publish(saved_models[0], repo, 1)
    server, target = _serve(repo, limiter=RateLimiter(anon_rate=0.2, keyed_rate=0))
    request = protos.ModelInferRequest(
        model_name="fashion-mnist",
        inputs=[protos.ModelInferRequest.InferInputTensor(name="images", datatype="FP32",
                                                          shape=[1, 28, 28])],
        raw_input_contents=[b"\0" * 3136])
    try:
        with grpc.insecure_channel(target) as channel:
            stub = Stub(channel)
            stub.ModelInfer(request)  # the one request a second's budget holds
            with pytest.raises(grpc.RpcError) as limited:
                stub.ModelInfer(request)
    finally:
        server.stop()
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit of 0.2 requests/s exceeded" in limited.value.details()
    assert dict(limited.value.trailing_metadata())["retry-after"] == "5"
