"""The model server's live statistics per served version, on a real port with real trained
models: the series on /metrics after HTTP v1, v2 and gRPC requests, by the version that
answered, across a hot swap; a failing model's 500s and its longest streak, which refusals at
the door (bad input, keys, rates, sizes, a full backlog) neither end nor lengthen; none of it
when turned off; the Open Inference Protocol's statistics extension over HTTP and gRPC
(tritonclient); and the fast way back to a version still loaded."""

import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.http import BackgroundServer, bind
from services.serving.app import create_app
from services.serving.limits import RateLimiter
from tests.conftest import images_array, wait_for
from tests.services.serving.test_load import _publish

pytestmark = [pytest.mark.integration]
PREDICT = "/v1/models/fashion-mnist:predict"
INFER = "/v2/models/fashion-mnist/infer"
FIVE = ("retrain_serving_version_requests", "retrain_serving_version_refused",
        "retrain_serving_version_latency_seconds", "retrain_serving_predicted_class",
        "retrain_serving_version_longest_error_streak")


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, trained_models):
    """The good model with one weight of its last layer set to NaN: every answer NaN."""
    import tf_keras

    from repository.layout import WEIGHTS_FILE
    from services.trainer import export, models

    model = models.build("cnn")
    model.load_weights(str(f"{trained_models.good.model_uri}/{WEIGHTS_FILE}"))
    kernel, bias = model.layers[-1].get_weights()
    bias[0] = np.nan
    model.layers[-1].set_weights([kernel, bias])
    assert isinstance(model, tf_keras.Model)
    return export.export(model, tmp_path_factory.mktemp("nan") / "model")


class Served:
    """A model server on 127.0.0.1 (HTTP and gRPC) over ``repo``."""

    def __init__(self, repo, **kwargs):
        self.repo = repo
        self.app = create_app(repo, poll_seconds=0.05, grpc=("127.0.0.1", 0), **kwargs)
        self.server = BackgroundServer(self.app, bind("127.0.0.1", 0, "model server"),
                                       "model-server").start()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        self.target = f"127.0.0.1:{self.app.state.grpc_port}"

    def publish(self, model_uri, version):
        _publish(model_uri, self.repo, version)
        wait_for(lambda: self.app.state.holder.served_version == version)

    def stop(self):
        self.http.close()
        self.server.stop()

    def per_version(self):
        """{version: {"codes": {code: n}, "refused": {code: n}, "count": latency count,
        "classes": {c: n}, "streak": n}} read from /metrics."""
        found: dict[int, dict] = {}
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                if "version" not in sample.labels or family.name not in FIVE:
                    continue
                entry = found.setdefault(int(sample.labels["version"]),
                                         {"codes": {}, "refused": {}, "count": 0, "classes": {},
                                          "streak": 0})
                if sample.name == "retrain_serving_version_requests_total":
                    entry["codes"][int(sample.labels["code"])] = sample.value
                elif sample.name == "retrain_serving_version_refused_total":
                    entry["refused"][int(sample.labels["code"])] = sample.value
                elif sample.name == "retrain_serving_version_latency_seconds_count":
                    entry["count"] = sample.value
                elif sample.name == "retrain_serving_predicted_class_total":
                    entry["classes"][int(sample.labels["class"])] = sample.value
                elif sample.name == "retrain_serving_version_longest_error_streak":
                    entry["streak"] = sample.value
        return found


@pytest.fixture
def repo(tmp_path):
    return tmp_path / "repo"


def _grpc_infer(target, images, model="fashion-mnist"):
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(target)
    try:
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images.astype(np.float32))
        result = client.infer(model, [tensor])
        return int(result.get_response().model_version), result.as_numpy("probabilities")
    finally:
        client.close()


def _three_doors(served, images):
    """One v1, one v2 and one gRPC request of ``images``: each answer's version and classes."""
    v1 = served.http.post(PREDICT, json={"instances": images.tolist()})
    v2 = served.http.post(INFER, json={"inputs": [{"name": "images", "datatype": "FP32",
                                                  "shape": list(images.shape),
                                                  "data": images.ravel().tolist()}]})
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    version, by_grpc = _grpc_infer(served.target, images)
    answers = [(int(v1.json()["model_version"]), np.array(v1.json()["predictions"])),
               (int(v2.json()["model_version"]),
                np.array(v2.json()["outputs"][0]["data"]).reshape(-1, 10)),
               (version, by_grpc)]
    return answers


def _classes(answers, version):
    counts = np.zeros(10, int)
    for v, probs in answers:
        if v == version:
            counts += np.bincount(probs.argmax(axis=1), minlength=10)
    return {c: float(n) for c, n in enumerate(counts)}


def test_every_door_counts_under_the_version_that_answered_across_a_hot_swap(
        repo, trained_models):
    limiter = RateLimiter(anon_rate=0, keyed_rate=0, api_keys=("k",))
    _publish(trained_models.good.model_uri, repo, 1)
    served = Served(repo, limiter=limiter)
    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        images = images_array(6, seed=11)
        answers = _three_doors(served, images[:4])
        served.publish(trained_models.weak.model_uri, 2)
        answers += _three_doors(served, images[4:])
        bad = served.http.post(PREDICT, json={"instances": [[[0.0] * 27] * 28]})
        refused = served.http.post(PREDICT, json={"instances": images[:1].tolist()},
                                   headers={"Authorization": "Bearer wrong"})
        stats = served.per_version()
    finally:
        served.stop()
    assert bad.status_code == 400 and refused.status_code == 401
    assert [v for v, _ in answers] == [1, 1, 1, 2, 2, 2]
    assert stats[1]["codes"] == {200: 3} and stats[1]["count"] == 3
    assert stats[1]["refused"] == {}
    # refused before any model ran: counted apart, under the version served then
    assert stats[2]["codes"] == {200: 3} and stats[2]["count"] == 3
    assert stats[2]["refused"] == {400: 1, 401: 1}
    assert stats[1]["classes"] == _classes(answers, 1) and sum(stats[1]["classes"].values()) == 12
    assert stats[2]["classes"] == _classes(answers, 2) and sum(stats[2]["classes"].values()) == 6
    assert stats[1]["streak"] == 0 and stats[2]["streak"] == 0


def test_a_model_answering_nan_counts_500s_and_refusals_at_the_door_leave_its_streak_alone(
        repo, trained_models, nan_model):
    """A broken model under mixed traffic: 500s, then one refusal of each kind, then 500s
    again: one run of 500s (the fast rule's figure), and the refusals counted apart."""
    import tritonclient.grpc as triton

    frozen = RateLimiter(anon_rate=1, keyed_rate=0, api_keys=("k",), clock=lambda: 0.0)
    _publish(nan_model, repo, 1)
    served = Served(repo, limiter=frozen)
    image = {"instances": images_array(1, seed=3).tolist()}
    keyed = {"Authorization": "Bearer k"}

    def five_hundreds(n):
        return [served.http.post(PREDICT, json=image, headers=keyed).status_code
                for _ in range(n)]

    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        codes = five_hundreds(3)
        with pytest.raises(triton.InferenceServerException) as over_grpc:
            _grpc_infer(served.target, images_array(1, seed=3))  # anonymous: the one token
        refusals = [
            served.http.post("/v1/models/other:predict", json=image).status_code,
            served.http.post(PREDICT, json=image, headers={"Authorization": "Bearer no"}
                             ).status_code,
            served.http.post(PREDICT, json=image).status_code,  # anonymous, no token left
            served.http.post(PREDICT, content=b"x" * (8 * 1024 * 1024 + 1),
                             headers=keyed).status_code,
            served.http.post(PREDICT, json={"instances": [[[0.0] * 27] * 28]},
                             headers=keyed).status_code]
        codes += five_hundreds(4)
        before = served.per_version()
        triton_stats = served.http.get("/v2/models/fashion-mnist/versions/1/stats").json()
        served.publish(trained_models.good.model_uri, 2)
        assert served.http.post(PREDICT, json=image, headers=keyed).status_code == 200
        after = served.per_version()
    finally:
        served.stop()
    assert codes == [500] * 7 and over_grpc.value.status() == "StatusCode.INTERNAL"
    assert refusals == [404, 401, 429, 413, 400]
    assert before[1]["codes"] == {500: 8} and before[1]["streak"] == 8
    assert before[1]["refused"] == {400: 1, 401: 1, 404: 1, 413: 1, 429: 1}
    assert before[1]["classes"] == {} and before[1]["count"] == 0  # no successful answer
    [stat] = triton_stats["model_stats"]
    assert stat["inference_stats"]["fail"]["count"] == 8  # the model's failures, no refusal
    assert stat["inference_stats"]["success"]["count"] == 0
    assert after[1] == before[1]  # the gauge never goes down; the new version is its own
    assert after[2]["codes"] == {200: 1} and after[2]["streak"] == 0


def test_a_full_backlog_is_a_refusal_and_a_model_raising_is_its_versions_500(
        tmp_path, trained_models, caplog):
    """503s while the model is busy with a full queue's worth of images are the door's, not
    the version's; a model call that raises is the version's failure."""
    from services.serving.model import LoadedModel

    repo = tmp_path / "repo"
    _publish(trained_models.good.model_uri, repo, 1)
    served = Served(repo, max_queued=8)
    images = images_array(8, seed=1).tolist()
    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        assert served.http.post(PREDICT, json={"instances": images[:1]}).status_code == 200
        holder = served.app.state.holder
        real = holder.current
        gate = threading.Event()

        def held(**inputs):  # the real model, called once the test opens the gate
            gate.wait(30)
            return real.serve_arrays(**inputs)

        holder._current = LoadedModel(real.version, real.path, real.serve_bytes, held)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(served.http.post, PREDICT, json={"instances": images})
            deadline = time.monotonic() + 10
            while "retrain_serving_queued_images 8.0" not in served.http.get("/metrics").text:
                assert time.monotonic() < deadline, "the first request never reached the model"
                time.sleep(0.02)
            overloaded = [served.http.post(PREDICT, json={"instances": images[:1]}).status_code
                          for _ in range(5)]
            gate.set()
            assert first.result().status_code == 200
        full = served.per_version()

        def raising(**inputs):
            raise RuntimeError("a kernel the model needs is missing")

        holder._current = LoadedModel(real.version, real.path, real.serve_bytes, raising)
        with caplog.at_level(logging.ERROR, logger="services.serving.plane"):
            failed = served.http.post(PREDICT, json={"instances": images[:1]})
            broken = served.per_version()
            again = [served.http.post(PREDICT, json={"instances": images[:1]}).status_code
                     for _ in range(3)]
        holder._current = real
    finally:
        served.stop()
    assert overloaded == [503] * 5
    assert full[1]["codes"] == {200: 2} and full[1]["refused"] == {503: 5}
    assert full[1]["streak"] == 0
    assert failed.status_code == 500 and failed.json() == {"error": "internal server error"}
    assert again == [500] * 3
    said = [r for r in caplog.records if "failed a model call" in r.getMessage()]
    assert len(said) == 1 and "kernel the model needs" in _traceback(said[0])  # once
    assert broken[1]["codes"] == {200: 2, 500: 1} and broken[1]["streak"] == 1


def test_statistics_turned_off_export_nothing_per_version(repo, trained_models):
    from services.serving.grpc_protocol import Stub
    from services.serving.grpc_protocol import messages as protos

    _publish(trained_models.good.model_uri, repo, 1)
    served = Served(repo, version_stats=False)
    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        assert served.http.post(PREDICT, json={"instances": images_array(1).tolist()}
                                ).status_code == 200
        text = served.http.get("/metrics").text
        extensions = served.http.get("/v2").json()["extensions"]
        stats = served.http.get("/v2/models/fashion-mnist/stats")
        with grpc.insecure_channel(served.target) as channel, \
                pytest.raises(grpc.RpcError) as over_grpc:
            Stub(channel).ModelStatistics(protos.ModelStatisticsRequest(name="fashion-mnist"))
    finally:
        served.stop()
    assert 'retrain_serving_requests_total{code="200",protocol="v1"} 1.0' in text
    assert not [name for name in FIVE if name in text]
    assert extensions == ["binary_tensor_data"]
    assert stats.status_code == 501 and "RETRAIN_SERVE_VERSION_STATS=0" in stats.json()["error"]
    assert over_grpc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_statistics_extension_through_tritonclient_over_http_and_grpc(repo, trained_models):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    _publish(trained_models.good.model_uri, repo, 1)
    served = Served(repo)
    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        images = images_array(5, seed=4)
        served.http.post(PREDICT, json={"instances": images[:3].tolist()})
        served.publish(trained_models.weak.model_uri, 2)
        _grpc_infer(served.target, images[3:])
        served.http.post(PREDICT, json={"instances": [[[0.0] * 27] * 28]})
        http = triton_http.InferenceServerClient(served.server.url.removeprefix("http://"))
        over_grpc = triton_grpc.InferenceServerClient(served.target)
        try:
            by_http = http.get_inference_statistics("fashion-mnist")
            by_grpc = over_grpc.get_inference_statistics("fashion-mnist")  # its messages
            one = http.get_inference_statistics("fashion-mnist", "2")["model_stats"]
            every_model = http.get_inference_statistics()["model_stats"]
            assert "statistics" in http.get_server_metadata()["extensions"]
            assert "statistics" in over_grpc.get_server_metadata().extensions
            refusals = []
            for client in (http, over_grpc):
                for name, version in (("other", ""), ("fashion-mnist", "7")):
                    with pytest.raises(Exception) as refused:
                        client.get_inference_statistics(name, version)
                    refusals.append(refused.value.status())
        finally:
            http.close()
            over_grpc.close()
    finally:
        served.stop()
    stats = {s["version"]: s for s in by_http["model_stats"]}
    assert set(stats) == {"1", "2"} and all(s["name"] == "fashion-mnist" for s in stats.values())
    assert stats["1"]["inference_count"] == 3 and stats["1"]["execution_count"] >= 1
    assert stats["1"]["inference_stats"]["success"]["count"] == 1
    assert stats["1"]["inference_stats"]["success"]["ns"] > 0
    assert stats["2"]["inference_count"] == 2
    assert stats["2"]["inference_stats"]["success"]["count"] == 1
    assert stats["2"]["inference_stats"]["fail"]["count"] == 0  # the bad input: a refusal
    assert stats["2"]["last_inference"] >= stats["1"]["last_inference"] > 1.6e12  # ms
    assert one == [stats["2"]] and every_model == by_http["model_stats"]
    grpc_stats = {s.version: s for s in by_grpc.model_stats}
    assert set(grpc_stats) == {"1", "2"}
    for version, over_http in stats.items():
        assert grpc_stats[version].inference_count == over_http["inference_count"]
        assert grpc_stats[version].execution_count == over_http["execution_count"]
        assert grpc_stats[version].last_inference == over_http["last_inference"]
        for part in ("success", "fail"):
            measured = getattr(grpc_stats[version].inference_stats, part)
            assert measured.count == over_http["inference_stats"][part]["count"]
            assert measured.ns == over_http["inference_stats"][part]["ns"]
    assert refusals == ["404", "404", "StatusCode.NOT_FOUND", "StatusCode.NOT_FOUND"]


def test_a_republished_previous_model_swaps_in_without_a_load(tmp_path, trained_models):
    """A rollback publishes the previous model's files under a new number: served at once
    from the version still loaded, its LiteRT compilation kept; at most two kept besides."""
    from services.serving.model import ModelHolder

    repo = tmp_path / "repo"
    holder = ModelHolder(repo / "fashion-mnist", compile_after=3)
    _publish(trained_models.good.model_uri, repo, 1)
    assert holder.refresh() == 1 and holder.loads == 1
    images = images_array(4, seed=9).astype(np.float32)
    first = holder.current
    for _ in range(3):
        first.predict_arrays(images)
    wait_for(lambda: first.compiled is not None, seconds=60)
    good_answer = first.predict_arrays(images)
    _publish(trained_models.weak.model_uri, repo, 2)
    assert holder.refresh() == 2 and holder.loads == 2 and holder.kept == [1]
    _publish(trained_models.good.model_uri, repo, 3)  # the rollback: version 1's files
    assert holder.refresh() == 3 and holder.loads == 2  # no TensorFlow load
    assert holder.current.version == 3 and holder.kept == [2]
    assert holder.current.compiled is first.compiled
    np.testing.assert_allclose(holder.current.predict_arrays(images), good_answer, atol=1e-6)
    # other files: loaded; the oldest kept version is let go past two
    changed = tmp_path / "changed"
    shutil.copytree(trained_models.good.model_uri, changed)
    (changed / "assets.extra" / "retrain.json").write_text('{"note": "other files"}')
    _publish(changed, repo, 4)
    assert holder.refresh() == 4 and holder.loads == 3 and holder.kept == [3, 2]
    _publish(trained_models.weak.model_uri, repo, 5)  # version 2's files, still kept
    assert holder.refresh() == 5 and holder.loads == 3 and holder.kept == [4, 3]


def test_a_rollback_answers_under_its_new_version_at_once(repo, trained_models):
    _publish(trained_models.good.model_uri, repo, 1)
    served = Served(repo)
    image = images_array(1, seed=5)
    try:
        wait_for(lambda: served.app.state.holder.served_version == 1)
        before = served.http.post(PREDICT, json={"instances": image.tolist()}).json()
        served.publish(trained_models.weak.model_uri, 2)
        served.publish(trained_models.good.model_uri, 3)
        after = served.http.post(PREDICT, json={"instances": image.tolist()})
        loads = served.app.state.holder.loads
        stats = served.per_version()
    finally:
        served.stop()
    assert loads == 2 and after.headers["x-model-version"] == "3"
    np.testing.assert_allclose(after.json()["predictions"], before["predictions"], atol=1e-6)
    assert stats[3]["codes"] == {200: 1} and stats[1]["codes"] == {200: 1}


def test_a_large_answers_classes_are_counted_as_a_small_ones_are():
    """Past COUNTED_BY_HAND images the classes are counted by bincount, outside the lock:
    the same figures either way."""
    from services.serving.version_stats import COUNTED_BY_HAND, VersionStats

    probabilities = np.random.default_rng(7).random((1000, 10)).astype(np.float32)
    large, small = VersionStats(), VersionStats()
    large.answered(1, 200, 0.01, probabilities)
    for start in range(0, 1000, COUNTED_BY_HAND):
        small.answered(1, 200, 0.01, probabilities[start:start + COUNTED_BY_HAND])
    expected = np.bincount(probabilities.argmax(axis=1), minlength=10).tolist()
    assert large.snapshot()[1].classes == small.snapshot()[1].classes == expected
    assert large.snapshot()[1].images == small.snapshot()[1].images == 1000


def test_a_model_failing_every_request_writes_one_log_line_a_minute(caplog):
    from services.serving.plane import Repeated

    now = [0.0]
    said = Repeated("version %d answered probabilities that are not finite numbers", every=60,
                    clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="services.serving.plane"):
        for _ in range(500):
            said.said(2)
        said.said(3)
        now[0] = 61.0
        said.said(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["version 2 answered probabilities that are not finite numbers",
                     "version 3 answered probabilities that are not finite numbers",
                     "version 2 answered probabilities that are not finite numbers "
                     "(499 more times since)"]


def test_a_raising_model_is_logged_once_with_its_traceback(caplog):
    from services.serving.plane import Repeated

    said = Repeated("version %d failed a model call", clock=lambda: 0.0)
    with caplog.at_level(logging.ERROR, logger="services.serving.plane"):
        for _ in range(100):
            said.said(4, ValueError("the graph is broken"))
    [line] = caplog.records
    assert line.getMessage() == "version 4 failed a model call"
    assert "ValueError: the graph is broken" in _traceback(line)


def _traceback(record):
    """The traceback a log line carries (the secrets filter, once installed by an earlier
    test's logging set-up, keeps it redacted as text)."""
    if record.exc_info:
        return logging.Formatter().formatException(record.exc_info)
    return record.exc_text or ""
