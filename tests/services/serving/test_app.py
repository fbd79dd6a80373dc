import base64
import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.serving.app import create_app

pytestmark = [pytest.mark.integration]


@pytest.fixture
def client(tmp_path, saved_model):
    shutil.copytree(saved_model, tmp_path / "repo" / "fashion-mnist" / "1")
    with TestClient(create_app(tmp_path / "repo", poll_seconds=0.1)) as c:
        yield c


def _png(value=128):
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8), "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_v1_predict_with_the_books_request(client):
    r = client.post("/v1/models/fashion-mnist:predict",
                    json={"instances": [{"image_bytes": {"b64": _png()}}, {"image_bytes": {"b64": _png(9)}}]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == 2 and len(preds[0]) == 10 and abs(sum(preds[0]) - 1) < 1e-4
    assert r.headers["x-model-version"] == "1"
    # float32 values, each written as the shortest decimal that reads back as itself
    # (not 0.10000000149011612, the value widened to a double)
    assert all(float(str(np.float32(p))) == p for p in preds[0] + preds[1])


def test_v1_predict_with_raw_arrays(client):
    r = client.post("/v1/models/fashion-mnist:predict", json={"instances": [np.zeros((28, 28)).tolist()]})
    assert r.status_code == 200 and len(r.json()["predictions"][0]) == 10


def test_v2_infer_with_bytes_and_with_floats(client):
    r = client.post("/v2/models/fashion-mnist/infer", json={
        "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [_png()]}]})
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "1" and body["outputs"][0]["shape"] == [1, 10]
    r = client.post("/v2/models/fashion-mnist/infer", json={
        "inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "FP32", "data": [0.0] * 1568}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 10]


def test_a_v2_id_json_reads_is_echoed_whatever_it_holds(client):
    """A lone surrogate is valid JSON text that ``json.loads`` reads (and orjson will not
    write): the request is answered, its id echoed escaped as it came."""
    text = json.dumps({"id": "\ud800-x", "inputs": [
        {"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]})
    r = client.post("/v2/models/fashion-mnist/infer", content=text,
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert b'"id":"\\ud800-x"' in r.content and r.json()["outputs"][0]["shape"] == [1, 10]


def test_ready_and_metadata_endpoints(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/fashion-mnist/ready").json()["ready"] is True
    assert client.get("/v2/models/fashion-mnist").json()["versions"] == ["1"]
    assert client.get("/v1/models/fashion-mnist").json()["model_version"] == "1"


@pytest.mark.parametrize("body,fragment", [
    ({"nope": 1}, '"instances"'),
    ({"instances": []}, "non-empty"),
    ({"instances": [{"image_bytes": {"b64": "!!!"}}]}, "not valid base64"),
    ({"instances": [{"image_bytes": {"b64": base64.b64encode(b"not an image").decode()}}]}, "cannot decode"),
    ({"instances": [np.zeros((27, 28)).tolist()]}, "28x28"),
    ({"instances": [[["a"] * 28] * 28]}, "numbers"),
])
def test_v1_bad_inputs_are_400_with_the_reason(client, body, fragment):
    r = client.post("/v1/models/fashion-mnist:predict", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_numbers_float32_cannot_hold_are_400_naming_them_not_a_model_answering_nan(client):
    image = np.zeros((28, 28))
    image[3, 5] = 1e39
    r = client.post("/v1/models/fashion-mnist:predict", json={"instances": [image.tolist()]})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == ("instances[0][3][5]: 1e+39 is out of float32's range (its "
                                 "largest is 3.4e+38)")
    nan = client.post("/v1/models/fashion-mnist:predict",
                      headers={"content-type": "application/json"},
                      content=json.dumps({"instances": [np.zeros((28, 28)).tolist()]})
                      .replace("0.0", "NaN", 1))
    assert nan.status_code == 400 and nan.json()["error"] == "instances[0][0][0]: not a number"
    data = [0.0] * 784
    data[10] = -1e39
    v2 = client.post("/v2/models/fashion-mnist/infer", json={
        "inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": data}]})
    assert v2.status_code == 400, v2.text
    assert "inputs[0].data element 10: -1e+39 is out of float32's range" in v2.json()["error"]


def test_v2_shape_mismatch_is_400(client):
    r = client.post("/v2/models/fashion-mnist/infer", json={
        "inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "FP32", "data": [0.0] * 10}]})
    assert r.status_code == 400 and "needs 1568 values" in r.json()["error"]


def test_invalid_json_unknown_model_and_oversized_body(client):
    assert client.post("/v1/models/fashion-mnist:predict", content=b"{").status_code == 400
    assert client.post("/v1/models/other:predict", json={"instances": [[0]]}).status_code == 404
    big = b"[" + b"0," * (5 * 1024 * 1024) + b"0]"
    assert client.post("/v1/models/fashion-mnist:predict", content=big).status_code == 413
    # streamed without a Content-Length: refused while it arrives, and joined when it fits
    streamed = client.post("/v1/models/fashion-mnist:predict", content=iter([b"0" * 1_000_000] * 9))
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    body = json.dumps({"instances": [{"image_bytes": {"b64": _png()}}]}).encode()
    pieces = iter([body[:10], body[10:40], body[40:]])
    answer = client.post("/v1/models/fashion-mnist:predict", content=pieces)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 10


def test_the_inference_routes_take_post_only_and_answer_errors_as_json(client):
    for path in ("/v1/models/fashion-mnist:predict", "/v2/models/fashion-mnist/infer"):
        r = client.get(path)
        assert r.status_code == 405 and r.headers["allow"] == "POST" and "POST" in r.json()["error"]
    r = client.post("/v2/models/other/infer", json={"inputs": []})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert r.headers["content-type"] == "application/json"
    # a path beside them is FastAPI's own
    r = client.post("/v2/models/fashion-mnist/infer/more", json={})
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_not_ready_without_a_model(tmp_path):
    with TestClient(create_app(tmp_path / "empty")) as c:
        assert c.get("/v2/health/ready").status_code == 503
        valid = {"instances": [np.zeros((28, 28)).tolist()]}
        assert c.post("/v1/models/fashion-mnist:predict", json=valid).status_code == 503


def test_a_new_version_is_picked_up(client, tmp_path, saved_model):
    shutil.copytree(saved_model, tmp_path / "repo" / "fashion-mnist" / "2")
    client.app.state.holder.refresh()
    r = client.post("/v1/models/fashion-mnist:predict", json={"instances": [{"image_bytes": {"b64": _png()}}]})
    assert r.headers["x-model-version"] == "2"


def test_a_broken_version_is_skipped_and_the_old_one_kept(client, tmp_path):
    broken = tmp_path / "repo" / "fashion-mnist" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a model")
    holder = client.app.state.holder
    assert holder.refresh() == 1
    assert 2 in holder._unloadable
    r = client.post("/v1/models/fashion-mnist:predict", json={"instances": [{"image_bytes": {"b64": _png()}}]})
    assert r.status_code == 200 and r.headers["x-model-version"] == "1"


def test_rate_limits_answer_429_with_retry_after_and_keys_get_their_own(tmp_path, saved_model):
    from services.serving.limits import RateLimiter

    shutil.copytree(saved_model, tmp_path / "repo" / "fashion-mnist" / "1")
    limiter = RateLimiter(anon_rate=2, keyed_rate=0, api_keys=("sekret",))
    body = {"instances": [{"image_bytes": {"b64": _png()}}]}
    with TestClient(create_app(tmp_path / "repo", limiter=limiter)) as c:
        codes = [c.post("/v1/models/fashion-mnist:predict", json=body).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and 429 in codes[2:]
        refused = c.post("/v2/models/fashion-mnist/infer", json={"inputs": []})
        assert refused.status_code == 429  # limited before the body is even looked at
        assert int(refused.headers["Retry-After"]) >= 1
        assert "rate limit of 2 requests/s exceeded" in refused.json()["error"]
        keyed = [c.post("/v1/models/fashion-mnist:predict", json=body,
                        headers={"Authorization": "Bearer sekret"}).status_code for _ in range(10)]
        assert keyed == [200] * 10
        wrong = c.post("/v1/models/fashion-mnist:predict", json=body,
                       headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401 and "not one of RETRAIN_API_KEYS" in wrong.json()["error"]
        assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'  # RFC 6750
        assert c.get("/v2/health/ready").status_code == 200  # health is never limited
        assert 'code="429"' in c.get("/metrics").text


def test_a_model_answering_nan_is_a_500_over_every_door_and_encoding(tmp_path):
    from services.serving.model import import_tensorflow

    tf = import_tensorflow()

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            return {"probabilities": tf.fill([tf.shape(image_bytes)[0], 10], float("nan"))}

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
        def serve_arrays(self, images):
            return {"probabilities": tf.fill([tf.shape(images)[0], 10], float("nan"))}

    broken = Broken()
    tf.saved_model.save(broken, str(tmp_path / "repo" / "fashion-mnist" / "1"), signatures={
        "serving_default": broken.serve_bytes.get_concrete_function(),
        "predict_images": broken.serve_arrays.get_concrete_function()})
    import grpc

    from services.serving.grpc_protocol import Stub
    from services.serving.grpc_protocol import messages as protos

    app = create_app(tmp_path / "repo", poll_seconds=0.1, grpc=("127.0.0.1", 0))
    image = {"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    with TestClient(app) as c:
        r = c.post("/v1/models/fashion-mnist:predict", json={"instances": [[[0.0] * 28] * 28]})
        v2 = c.post("/v2/models/fashion-mnist/infer", json={"inputs": [image]})
        # what tritonclient asks by default: the output as binary tensor data, and over gRPC
        binary = c.post("/v2/models/fashion-mnist/infer", json={"inputs": [image], "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}}]})
        with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as over_grpc:
                Stub(channel).ModelInfer(protos.ModelInferRequest(
                    model_name="fashion-mnist", inputs=[protos.ModelInferRequest.InferInputTensor(
                        name="images", datatype="FP32", shape=[1, 28, 28])],
                    raw_input_contents=[bytes(784 * 4)]), timeout=30)
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    assert v2.status_code == 500 and v2.json() == {"error": "internal server error"}
    assert binary.status_code == 500 and binary.json() == {"error": "internal server error"}
    assert over_grpc.value.code() == grpc.StatusCode.INTERNAL


def test_the_served_openapi_document_describes_the_inference_routes(tmp_path):
    """Predict and infer are answered ahead of FastAPI; its /openapi.json and /docs still
    describe them, beside the routes FastAPI answers."""
    import httpx

    from core.http import BackgroundServer, bind

    server = BackgroundServer(create_app(tmp_path / "empty"), bind("127.0.0.1", 0, "model server"),
                              "model-server").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            document = http.get("/openapi.json").json()
            docs = http.get("/docs")
    finally:
        server.stop()
    paths = document["paths"]
    predict = paths["/v1/models/{name}:predict"]["post"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(predict["requestBody"]["content"]) == {"application/json"}
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    schemas = document["components"]["schemas"]
    for operation, required in ((predict, ["instances"]), (infer, ["inputs"])):
        reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert schemas[reference.rsplit("/", 1)[1]]["required"] == required
        assert {"200", "400", "401", "404", "413", "429", "503"} <= set(operation["responses"])
    assert [p["name"] for p in infer["parameters"]] == ["name", "Inference-Header-Content-Length"]
    for path, method in (("/v1/models/{name}", "get"), ("/v2", "get"), ("/v2/health/live", "get"),
                         ("/v2/health/ready", "get"), ("/v2/models/{name}", "get"),
                         ("/v2/models/{name}/ready", "get"), ("/metrics", "get")):
        assert method in paths[path], path
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for operation in (predict, infer):  # a key is optional: anonymous callers are served too
        assert sorted(operation["security"], key=len) == [{}, {"HTTPBearer": []}]
        assert "X-Model-Version" in operation["responses"]["200"]["headers"]
    from openapi_spec_validator import validate

    validate(document)  # a valid OpenAPI 3.1 document, as generators and /docs read it


def test_each_route_fastapi_documents_as_inference_is_one_the_fast_path_answers(tmp_path):
    """The documented predict and infer are the paths answered ahead of FastAPI, no more."""
    app = create_app(tmp_path / "empty")
    documented = app.openapi()["paths"]
    inference = {path for path, methods in documented.items() if "post" in methods}
    assert inference == {"/v1/models/{name}:predict", "/v2/models/{name}/infer"}
    for path in documented:
        scope = {"type": "http", "path": path.replace("{name}", "fashion-mnist")}
        assert (app.inference.match(scope) is not None) == (path in inference), path
