"""The KServe backend against the stand-in Kubernetes API (tests/services/selector/kube_standin.py),
with canary health read from real model servers under real load."""

import base64
import io
import shutil
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from core.http import BackgroundServer, bind
from events import EventType, make_event
from events.payloads import ModelTrained
from services.selector.champion import Champion, ChampionStore
from services.selector.kserve import (
    CanaryRolledBackError,
    CanaryUnsupportedError,
    KServeBackend,
    Rollout,
    ScrapedHealth,
    kube_client,
)
from services.serving.app import create_app as create_server
from tests.services.selector.kube_standin import TOKEN, KubeStandIn

pytestmark = [pytest.mark.integration]
PREFIX = "pvc://retrain-data/models"
RELEASES = f"{PREFIX}/releases/fashion-mnist"
BASE_URI = "pvc://retrain-data/models/fashion-mnist"  # what manifests/base serves at first


@pytest.fixture
def kube():
    started = []

    def start(**kwargs):
        standin = KubeStandIn(**kwargs).start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()
        assert standin.violations == [], standin.violations


def _backend(standin, tmp_path, rollout=Rollout(), health=None):
    return KServeBackend(kube_client(standin.server.url, TOKEN), "retrain", "fashion-mnist",
                         tmp_path / "models", PREFIX, rollout, health)


def _canary(step_seconds=0.8, **kwargs):
    return Rollout("canary", steps=(10, 50), step_seconds=step_seconds, min_requests=5,
                   poll_seconds=0.05, **kwargs)


class _Canary:
    """A real model server standing where the canary revision would, with clients hitting it."""

    def __init__(self, repo, saved_model=None):
        if saved_model is not None:
            shutil.copytree(saved_model, repo / "fashion-mnist" / "1")
        repo.mkdir(parents=True, exist_ok=True)
        self.server = BackgroundServer(create_server(repo, batching=None),
                                       bind("127.0.0.1", 0, "canary"), "canary").start()
        buf = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(buf, format="PNG")
        self._body = {"instances": [{"image_bytes": {"b64": base64.b64encode(buf.getvalue()).decode()}}]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load, daemon=True)

    def _load(self):
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            while not self._stop.is_set():
                client.post("/v1/models/fashion-mnist:predict", json=self._body)

    @property
    def health(self):
        return ScrapedHealth(self.server.url + "/metrics")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.server.stop()


def test_replace_points_the_inference_service_at_the_new_release(kube, tmp_path, saved_model):
    standin = kube()
    backend = _backend(standin, tmp_path)
    staged = backend.stage(str(saved_model), backend.next_version())
    assert standin.patches == []  # staging changes nothing anyone can see
    backend.publish(staged)
    assert standin.patches == [{"canaryTrafficPercent": None, "model": {"storageUri": f"{RELEASES}/1"}}]
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == f"{RELEASES}/1"
    assert (tmp_path / "models/releases/fashion-mnist/1/1/saved_model.pb").is_file()
    assert staged.location == str(tmp_path / "models/releases/fashion-mnist/1/1")
    assert backend.next_version() == 2
    status = standin.isvc["status"]["components"]["predictor"]
    assert status["latestRolledoutRevision"] == status["latestReadyRevision"]
    # the backend waited for the new revision: it looked again after the not-ready answer
    assert [v for v, _, _ in standin.requests].count("GET") >= 3


def test_canary_steps_up_and_takes_all_traffic_when_healthy(kube, tmp_path, saved_model):
    standin = kube()
    with _Canary(tmp_path / "canary", saved_model) as canary:
        backend = _backend(standin, tmp_path, _canary(max_p99_seconds=5.0), canary.health)
        backend.publish(backend.stage(str(saved_model), backend.next_version()))
    uri = {"storageUri": f"{RELEASES}/1"}
    assert standin.patches == [{"canaryTrafficPercent": 10, "model": uri},
                               {"canaryTrafficPercent": 50, "model": uri},
                               {"canaryTrafficPercent": None}]
    predictor = standin.isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"{RELEASES}/1"
    assert "canaryTrafficPercent" not in predictor
    traffic = standin.isvc["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic] == [100]


@pytest.mark.parametrize("failure", ["errors", "latency"])
def test_an_unhealthy_canary_is_rolled_back(kube, tmp_path, saved_model, failure):
    standin = kube()
    if failure == "errors":  # a canary with no loadable model answers 503 to everything
        canary, rollout = _Canary(tmp_path / "canary"), _canary()
    else:  # real latencies against a threshold no server meets
        canary, rollout = _Canary(tmp_path / "canary", saved_model), _canary(max_p99_seconds=1e-6)
    with canary:
        backend = _backend(standin, tmp_path, rollout, canary.health)
        staged = backend.stage(str(saved_model), backend.next_version())
        with pytest.raises(CanaryRolledBackError) as raised:
            backend.publish(staged)
    message = str(raised.value)
    assert "canary rolled back at 10%" in message and f"{BASE_URI} serves all traffic" in message
    assert ("error rate 1.000 > 0.010" if failure == "errors" else "p99 latency") in message
    assert standin.patches == [
        {"canaryTrafficPercent": 10, "model": {"storageUri": f"{RELEASES}/1"}},
        {"canaryTrafficPercent": 0},
        {"canaryTrafficPercent": None, "model": {"storageUri": BASE_URI}},
    ]
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == BASE_URI


@pytest.mark.parametrize("where", ["annotation", "cluster default"])
def test_canary_is_refused_where_kserve_would_ignore_it(kube, tmp_path, saved_model, where):
    standin = kube(mode_annotation="RawDeployment") if where == "annotation" else kube(default_mode="RawDeployment")
    never_read = ScrapedHealth("http://127.0.0.1:9/metrics")  # refused before any canary step
    backend = _backend(standin, tmp_path, _canary(), health=never_read)
    with pytest.raises(CanaryUnsupportedError, match="RawDeployment mode, where KServe ignores "
                                                     "canaryTrafficPercent"):
        backend.stage(str(saved_model), backend.next_version())
    assert standin.patches == []
    assert not (tmp_path / "models" / "releases").exists() or not any((tmp_path / "models/releases").rglob("*"))
    # the replace strategy works in that mode
    replace = _backend(standin, tmp_path)
    replace.publish(replace.stage(str(saved_model), replace.next_version()))
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == f"{RELEASES}/1"


def test_api_errors_are_reported_with_the_servers_message(kube, tmp_path, saved_model):
    from services.selector.kserve import KServeError

    standin = kube()
    wrong_token = KServeBackend(kube_client(standin.server.url, "nope"), "retrain", "fashion-mnist",
                                tmp_path / "models", PREFIX)
    with pytest.raises(KServeError, match="answered 401 to GET .*without the bearer token"):
        wrong_token.stage(str(saved_model), 1)
    standin.violations.clear()  # refused as it should be
    missing = KServeBackend(kube_client(standin.server.url, TOKEN), "retrain", "no-such-model",
                            tmp_path / "models", PREFIX)
    with pytest.raises(KServeError, match="answered 404"):
        missing.stage(str(saved_model), 1)
    standin.violations.clear()


def test_a_rolled_back_canary_leaves_the_champion_in_place(kube, tmp_path, saved_model, r, ingested,
                                                          trained_models):
    from services.selector.evaluate import Evaluator
    from services.selector.policy import ChampionPolicy
    from services.selector.service import Selector

    standin = kube()
    store = ChampionStore(r)
    champion = Champion(1, str(saved_model), "cnn", 0.0, "d0", ingested, "run0", generation=1)
    assert store.replace(0, champion)
    emitted = []
    with _Canary(tmp_path / "canary") as canary:
        selector = Selector(store, _backend(standin, tmp_path, _canary(), canary.health),
                            Evaluator(), emitted.append,
                            ChampionPolicy(max_class_drop=1))  # an untrained model's sneakers
        decision = selector.handle(make_event(EventType.MODEL_TRAINED, ModelTrained(
            run_id="run1", model_type="dropout", model_uri=trained_models.good.model_uri,
            dataset_uri=ingested, dataset_digest="d1", val_accuracy=0.5, val_loss=1.0,
            seconds=1.0), source="t"))  # a trained model: better than the untrained champion
    assert decision.type is EventType.MODEL_REJECTED
    assert "promotion failed, champion kept: canary rolled back at 10%" in decision.data.reason
    kept = store.get()
    assert (kept.version, kept.model_uri, kept.run_id) == (1, str(saved_model), "run0")
    assert kept.generation == 3  # 1 → 2 (candidate) → 3 (put back): fencing stays monotonic
    assert store.decisions()[-1]["reason"] == decision.data.reason
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == BASE_URI


def test_a_canary_cut_short_by_a_stopped_selector_is_undone_and_a_finished_one_kept(
        kube, tmp_path, saved_model):
    from pathlib import Path

    standin = kube()
    backend = _backend(standin, tmp_path)
    first = backend.stage(str(saved_model), backend.next_version())
    backend.publish(first)
    second = backend.stage(str(saved_model), backend.next_version())
    # what a selector SIGKILLed at the first canary step leaves: the release in place, 10 %
    Path(second.handle).rename(Path(second.location).parent)
    backend._patch({"canaryTrafficPercent": 10, "model": {"storageUri": f"{RELEASES}/2"}})

    assert backend.resume(second, first.location) is False
    assert standin.patches[-1] == {"canaryTrafficPercent": None,
                                   "model": {"storageUri": f"{RELEASES}/1"}}
    predictor = standin.isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"{RELEASES}/1"
    assert "canaryTrafficPercent" not in predictor
    assert not Path(second.location).exists() and backend.next_version() == 2

    third = backend.stage(str(saved_model), backend.next_version())
    backend.publish(third)  # the whole rollout happened; only the commit was lost
    patches = len(standin.patches)
    assert backend.resume(third, first.location) is True
    assert len(standin.patches) == patches  # nothing changed: it is finished
