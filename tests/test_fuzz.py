"""Thousands of malformed requests against every HTTP endpoint that takes input: the answer
is always a 4xx or a success, never a 5xx (hypothesis generates the requests)."""

import hashlib
import hmac
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.dedup import Deduplicator
from events.outbox import Outbox
from services.ingest_watcher.webhooks import BucketWebhooks, GitWebhooks
from services.ingest_watcher.app import create_app as create_watcher
from services.ingest_watcher.git import GitSource
from services.ingest_watcher.s3 import BucketSource
from services.ingest_watcher.watcher import DirectoryWatcher
from workflows.trigger import create_app as create_trigger

pytestmark = pytest.mark.integration
# examples per property: the profile's (conftest: 60 by default, 400 with make test-deep)
EXAMPLES = settings(deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# tensors of a real image's size (3,136 bytes of FP32) sometimes pass hypothesis's entropy budget
TENSORS = settings(EXAMPLES, suppress_health_check=[*EXAMPLES.suppress_health_check,
                                                     HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
EVENT_KEYS = ["specversion", "type", "source", "id", "data", "datacontenttype", "time", "subject"]
event_like = st.dictionaries(st.sampled_from(EVENT_KEYS) | st.text(max_size=8),
                             json_values | st.sampled_from(["1.0", "dataset.updated",
                                                            "dev.retrain.model.trained", "dev.x"]),
                             max_size=8)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=3).map(lambda v: json.dumps(v).encode()),
)
header_names = st.sampled_from(["ce-specversion", "ce-type", "ce-source", "ce-id", "ce-time",
                                "content-type", "x-github-event", "x-gitlab-event",
                                "x-gitlab-token", "authorization", "x-github-delivery",
                                "x-hub-signature-256"])
latin1 = st.text(alphabet=st.characters(min_codepoint=160, max_codepoint=255), min_size=1, max_size=8)
header_values = st.sampled_from(["1.0", "dev.retrain.dataset.updated", "application/json",
                                 "application/cloudevents+json", "application/cloudevents-batch+json",
                                 "push", "ping", "Push Hook", "Bearer k", "", "x" * 40]) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20) | (
    # HTTP headers are bytes: what arrives need not be ASCII (a token, a signature)
    st.sampled_from(["Bearer ", "sha256=", ""]).flatmap(
        lambda prefix: latin1.map(lambda t: (prefix + t).encode("latin-1"))))
headers = st.dictionaries(header_names, header_values, max_size=6)


def _no_5xx(client, path, body, hdrs):
    response = client.post(path, content=body, headers=hdrs)
    assert response.status_code < 500, (path, body[:200], hdrs, response.text[:300])


@pytest.fixture
def trigger_client(r):
    with TestClient(create_trigger(Deduplicator(r, 60, "fuzz"), lambda e: None, ("k",)),
                    raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def watcher_client(r, tmp_path):
    watcher = DirectoryWatcher(tmp_path / "data", Outbox(r, None, "fuzz-events"), r, tmp_path / "s")
    git = GitWebhooks(GitSource(str(tmp_path / "nowhere"), "main", "data"),
                      Outbox(r, None, "fuzz-git"), "secret", "token")
    bucket = BucketWebhooks(BucketSource.parse("s3://b/p"), Outbox(r, None, "fuzz-s3"), None)
    with TestClient(create_watcher(watcher, ("k",), git, bucket), raise_server_exceptions=False) as client:
        yield client


@EXAMPLES
@given(body=bodies, hdrs=headers)
def test_events_endpoint_never_answers_5xx(trigger_client, body, hdrs):
    _no_5xx(trigger_client, "/events", body, {**hdrs, "authorization": "Bearer k"})
    _no_5xx(trigger_client, "/events", body, hdrs)


@EXAMPLES
@given(body=bodies, hdrs=headers)
def test_webhooks_never_answer_5xx(watcher_client, body, hdrs):
    signed = {**hdrs, "x-hub-signature-256": "sha256=" + hmac.new(b"secret", body, hashlib.sha256).hexdigest(),
              "x-github-event": hdrs.get("x-github-event", "push")}
    _no_5xx(watcher_client, "/webhooks/github", body, signed)
    _no_5xx(watcher_client, "/webhooks/github", body, hdrs)
    _no_5xx(watcher_client, "/webhooks/gitlab", body, {**hdrs, "x-gitlab-token": "token",
                                                       "x-gitlab-event": "Push Hook"})
    _no_5xx(watcher_client, "/webhooks/s3", body, hdrs)
    _no_5xx(watcher_client, "/rescan", body, hdrs)


s3_records = st.lists(st.fixed_dictionaries({
    "eventSource": st.sampled_from(["aws:s3", "minio:s3", "aws:sqs"]) | json_values,
    "s3": st.fixed_dictionaries({"bucket": st.fixed_dictionaries({"name": st.sampled_from(["b", "c"]) | json_values}),
                                 "object": st.fixed_dictionaries({"key": st.sampled_from(
                                     ["p/x", "p/../x", "/p/x", "p/a%2F..%2Fb", "p/", "q/x"]) | json_values})})
    | json_values}), max_size=4)


@EXAMPLES
@given(records=s3_records)
def test_structured_bucket_notifications_never_answer_5xx(watcher_client, records):
    _no_5xx(watcher_client, "/webhooks/s3", json.dumps({"Records": records}).encode(), {})


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory, saved_model):
    repo = tmp_path_factory.mktemp("fuzz-repo")
    shutil.copytree(saved_model, repo / "fashion-mnist" / "1")
    return repo


@pytest.fixture
def serving_client(model_repo):
    from services.serving.app import create_app
    from services.serving.limits import RateLimiter

    limiter = RateLimiter(anon_rate=0, keyed_rate=0, api_keys=("k",))  # keys checked, no limit
    with TestClient(create_app(model_repo, limiter=limiter), raise_server_exceptions=False) as client:
        yield client


instances = st.one_of(
    json_values,
    st.lists(st.fixed_dictionaries({"image_bytes": st.fixed_dictionaries(
        {"b64": st.sampled_from(["", "AAAA", "iVBORw0KGgo=", "not base64!", "/9j/4AAQ"]) | st.text(max_size=12)})}),
        max_size=3),
    st.lists(st.lists(st.lists(st.floats(allow_nan=False, width=32) | st.integers(-5, 300), min_size=27, max_size=28),
                      min_size=27, max_size=28), min_size=1, max_size=2),
)
v2_inputs = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["images", "image_bytes"]) | json_values,
    "shape": st.lists(st.integers(-2, 30), max_size=4) | json_values,
    "datatype": st.sampled_from(["FP32", "BYTES", "INT64", "UINT8", "BOOL"]) | json_values,
    "data": st.lists(st.floats(allow_nan=False, width=32) | st.text(max_size=8), max_size=30) | json_values,
}), max_size=2)


@EXAMPLES
@given(v1=instances, v2=v2_inputs, raw=bodies, hdrs=headers)
def test_model_server_never_answers_5xx(serving_client, v1, v2, raw, hdrs):
    _no_5xx(serving_client, "/v1/models/fashion-mnist:predict", json.dumps({"instances": v1}).encode(), {})
    _no_5xx(serving_client, "/v2/models/fashion-mnist/infer", json.dumps({"inputs": v2}).encode(), {})
    _no_5xx(serving_client, "/v1/models/fashion-mnist:predict", raw, hdrs)
    _no_5xx(serving_client, "/v2/models/fashion-mnist/infer", raw, hdrs)


binary_inputs = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["images", "image_bytes"]),
    "shape": st.sampled_from([[1, 28, 28], [2, 28, 28], [1], [2], [0]]) | json_values,
    "datatype": st.sampled_from(["FP32", "BYTES", "UINT8", "FP64", "INT64"]) | json_values,
    "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 3200) | json_values})
    | json_values,
}), max_size=2)
header_lengths = st.none() | st.integers(-5, 4000) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=6)


@TENSORS
@given(v2=binary_inputs, tail=st.binary(max_size=3200), outputs=json_values,
       parameters=json_values, header_length=header_lengths)
def test_binary_inference_requests_never_answer_5xx(serving_client, v2, tail, outputs, parameters,
                                                    header_length):
    """The binary tensor data extension: JSON header, binary tail, a length header that may
    lie; and outputs or parameters of any shape."""
    text = json.dumps({"inputs": v2, "outputs": outputs, "parameters": parameters}).encode()
    length = str(len(text)) if header_length is None else str(header_length)
    _no_5xx(serving_client, "/v2/models/fashion-mnist/infer", text + tail,
            {"inference-header-content-length": length})
    _no_5xx(serving_client, "/v2/models/fashion-mnist/infer", text, {})


@pytest.fixture(scope="module")
def grpc_target(model_repo):
    from core.http import BackgroundServer, bind
    from services.serving.app import create_app
    from services.serving.limits import RateLimiter

    app = create_app(model_repo, grpc=("127.0.0.1", 0),
                     limiter=RateLimiter(anon_rate=0, keyed_rate=0, api_keys=("k",)))
    server = BackgroundServer(app, bind("127.0.0.1", 0, "model server"), "fuzz-grpc").start()
    yield f"127.0.0.1:{app.state.grpc_port}"
    server.stop()


grpc_tensors = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["images", "image_bytes", ""]),
    "datatype": st.sampled_from(["FP32", "BYTES", "UINT8", "FP64", "INT64", "INT32", "BOOL", "",
                                 "fp32"]),
    "shape": st.lists(st.integers(-3, 30), max_size=4),
    "fp32": st.lists(st.floats(allow_nan=True, width=32), max_size=40),
    "bytes": st.lists(st.binary(max_size=30), max_size=3),
    "uint": st.lists(st.integers(0, 2**32 - 1), max_size=5),
    "int64": st.lists(st.integers(-2**63, 2**63 - 1), max_size=5),
}), max_size=2)


@TENSORS
@given(tensors=grpc_tensors, raw=st.lists(st.binary(max_size=3200), max_size=2),
       name=st.sampled_from(["fashion-mnist", "other", ""]),
       outputs=st.lists(st.sampled_from(["probabilities", "logits", ""]), max_size=2),
       key=st.sampled_from([None, "Bearer k", "Bearer nope", "k", ""]))
def test_grpc_inference_never_fails_with_an_internal_error(grpc_target, tensors, raw, name,
                                                           outputs, key):
    import grpc

    from services.serving.grpc_protocol import Stub
    from services.serving.grpc_protocol import messages as protos

    request = protos.ModelInferRequest(
        model_name=name, raw_input_contents=raw,
        outputs=[protos.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        inputs=[protos.ModelInferRequest.InferInputTensor(
            name=t["name"], datatype=t["datatype"], shape=t["shape"],
            contents=protos.InferTensorContents(
                fp32_contents=t["fp32"], bytes_contents=t["bytes"], uint_contents=t["uint"],
                int64_contents=t["int64"])) for t in tensors])
    with grpc.insecure_channel(grpc_target) as channel:
        try:
            Stub(channel).ModelInfer(request, timeout=30,
                                     metadata=[("authorization", key)] if key is not None else None)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.UNAUTHENTICATED), (exc.code(), exc.details())
            assert exc.details()
