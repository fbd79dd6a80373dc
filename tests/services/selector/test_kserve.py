"""The KServe backend against the stand-in Kubernetes API (tests/services/selector/kube_standin.py).
A canary is judged by the live guard's rules on the figures of every predictor pod, summed: real
model-server-like pods on 127.0.0.1 (tests/services/selector/pod_servers.py) answer traffic split
as the InferenceService says, and the stand-in lists them as the canary's and the previous
revision's pods."""

import itertools
import threading
import time

import pytest

from core.kube import api_client
from events import EventType, make_event
from events.payloads import ModelTrained
from services.selector.champion import Champion, ChampionStore
from services.selector.guard_rules import GuardThresholds
from services.selector.kserve import (
    CanaryRolledBackError,
    CanaryUnsupportedError,
    KServeBackend,
    Rollout,
    kube_client,
)
from services.selector.pods import PodsSource, predictor_selector
from tests.services.selector.kube_standin import TOKEN, KubeStandIn
from tests.services.selector.pod_servers import MetricsPod

pytestmark = [pytest.mark.integration]
PREFIX = "pvc://retrain-data/models"
RELEASES = f"{PREFIX}/releases/fashion-mnist"
BASE_URI = "pvc://retrain-data/models/fashion-mnist"  # what manifests/base serves at first
THRESHOLDS = GuardThresholds(min_requests=20)


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


def _pods_source(standin):
    return PodsSource(api_client(standin.server.url, TOKEN), "retrain",
                      predictor_selector("fashion-mnist"))


def _backend(standin, tmp_path, rollout=None, metrics=None):
    return KServeBackend(kube_client(standin.server.url, TOKEN), "retrain", "fashion-mnist",
                         tmp_path / "models", PREFIX, rollout or Rollout(), metrics)


def _canary(step_seconds=0.8, **kwargs):
    return Rollout("canary", steps=(10, 50), step_seconds=step_seconds, thresholds=THRESHOLDS,
                   poll_seconds=0.05, **kwargs)


def healthy(i):
    return 200, 0.004, i % 10


class Traffic:
    """Users of the InferenceService: two pods of the previous revision serving version 1 and
    two canary pods serving ``version``, each answer sent where the InferenceService's traffic
    split says, round robin within a revision; ``canary_answers`` says how each canary pod
    answers its own i-th request (status, seconds, predicted class)."""

    def __init__(self, standin, version, canary_answers=(healthy, healthy)):
        self.standin, self.version = standin, version
        self.previous = [MetricsPod(), MetricsPod()]
        self.canary = [MetricsPod() for _ in canary_answers]
        self._answers = canary_answers
        for i, pod in enumerate(self.previous):
            standin.add_pod(f"fashion-mnist-predictor-00001-{i}", pod.port, revision=1)
        for i, pod in enumerate(self.canary):
            standin.add_pod(f"fashion-mnist-predictor-00002-{i}", pod.port, revision=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _canary_share(self):
        predictor = self.standin.isvc["spec"]["predictor"]
        if predictor["model"]["storageUri"] != f"{RELEASES}/{self.version}":
            return 0
        percent = predictor.get("canaryTrafficPercent")
        return 100 if percent is None else percent

    def _run(self):
        requests, canary_requests = itertools.count(), itertools.count()
        while not self._stop.is_set():
            n = next(requests)
            if n % 100 < self._canary_share():
                m = next(canary_requests)
                k = m % len(self.canary)
                code, seconds, label = self._answers[k](m // len(self.canary))
                self.canary[k].answer(self.version, code, seconds, label)
            else:
                self.previous[n % 2].answer(1, 200, 0.004, n % 10)
            self._stop.wait(0.0005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for pod in self.previous + self.canary:
            pod.stop()


def _serving_version_1(tmp_path):
    """The model repository's own folder holds version 1, which the InferenceService serves
    before its first release: the canary's release is numbered 2."""
    (tmp_path / "models" / "fashion-mnist" / "1").mkdir(parents=True)


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
    _serving_version_1(tmp_path)
    with Traffic(standin, version=2) as traffic:
        backend = _backend(standin, tmp_path, _canary(), _pods_source(standin))
        staged = backend.stage(str(saved_model), backend.next_version())
        assert staged.version == 2
        backend.publish(staged)
    uri = {"storageUri": f"{RELEASES}/2"}
    assert standin.patches == [{"canaryTrafficPercent": 10, "model": uri},
                               {"canaryTrafficPercent": 50, "model": uri},
                               {"canaryTrafficPercent": None}]
    predictor = standin.isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"{RELEASES}/2"
    assert "canaryTrafficPercent" not in predictor
    traffic_split = standin.isvc["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic_split] == [100]
    # every pod of both revisions was read at least as each step began and ended
    assert all(pod.scrapes >= 4 for pod in traffic.previous + traffic.canary)


def test_the_first_release_takes_all_traffic_while_no_revision_has_ever_served(
        kube, tmp_path, saved_model):
    """The InferenceService is applied before any model exists: its first revision, on an
    empty folder, never becomes ready, so the first release cannot be a canary beside it."""
    standin = kube(first_ready=False)
    backend = _backend(standin, tmp_path, _canary(), _pods_source(standin))
    backend.publish(backend.stage(str(saved_model), backend.next_version()))
    assert standin.patches == [{"canaryTrafficPercent": None,
                                "model": {"storageUri": f"{RELEASES}/1"}}]
    assert standin.pod_selectors == []  # no canary step read any pod
    status = standin.isvc["status"]["components"]["predictor"]
    assert status["latestReadyRevision"] == status["latestCreatedRevision"]


def _errors_now_and_then(i):  # every other answer: never enough in a row for the fast rule
    return (503, 0.004, None) if i % 2 else (200, 0.004, i % 10)


def _errors_only(i):
    return 503, 0.004, None


def _slow(i):
    return 200, 0.3, i % 10


def _one_class(i):  # a model that calls everything a T-shirt
    return 200, 0.004, 0


@pytest.mark.parametrize("answers, rule, figures", [
    ((healthy, _errors_now_and_then), "error_rate", "errors in"),
    ((healthy, _errors_only), "consecutive_errors", "errors in a row"),
    ((_slow, _slow), "p99_latency", "p99 29"),  # interpolated in the 0.2-0.3 s bucket
    ((_one_class, _one_class), "class_distribution", "Jensen-Shannon distance"),
], ids=["one of two pods errs", "errors in a row", "slow", "classes shifted"])
def test_an_unhealthy_canary_is_rolled_back_by_the_guards_rules(kube, tmp_path, saved_model,
                                                               answers, rule, figures):
    standin = kube()
    _serving_version_1(tmp_path)
    # the fast rule does not wait; a p99 needs 200 answers a side (guard_rules.P99_MIN_ANSWERS)
    step_seconds = {"consecutive_errors": 30.0, "p99_latency": 4.0}.get(rule, 0.8)
    began = time.monotonic()
    with Traffic(standin, version=2, canary_answers=answers) as traffic:
        backend = _backend(standin, tmp_path, _canary(step_seconds), _pods_source(standin))
        staged = backend.stage(str(saved_model), backend.next_version())
        with pytest.raises(CanaryRolledBackError) as raised:
            backend.publish(staged)
    step = raised.value.step
    assert step.broken[0].name == rule  # the first rule broken; others may be too
    message = str(raised.value)
    assert f"canary rolled back at 10%: {rule}: " in message and figures in message
    assert f"{BASE_URI} serves all traffic again" in message
    assert (step.percent, step.version) == (10, 2)
    assert step.baseline is not None and step.baseline.errors == 0  # the previous version's
    assert step.baseline.requests > step.window.requests > 0  # both summed over their pods
    if rule == "consecutive_errors":
        assert time.monotonic() - began < 15 and step.seconds < 15
    if rule == "error_rate":  # the erring pod alone would read 100 %, the healthy one 0 %
        assert 0.1 < step.window.error_rate < 0.9
        assert all(pod.scrapes >= 2 for pod in traffic.canary)
    assert standin.patches == [
        {"canaryTrafficPercent": 10, "model": {"storageUri": f"{RELEASES}/2"}},
        {"canaryTrafficPercent": 0},
        {"canaryTrafficPercent": None, "model": {"storageUri": BASE_URI}},
    ]
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == BASE_URI


def test_a_canary_whose_figures_cannot_be_read_is_rolled_back(kube, tmp_path, saved_model):
    standin = kube()  # no predictor pod is listed
    backend = _backend(standin, tmp_path, _canary(), _pods_source(standin))
    with pytest.raises(CanaryRolledBackError, match="canary rolled back at 10%: cannot read the "
                                                    "figures: no Running, Ready pod in retrain"):
        backend.publish(backend.stage(str(saved_model), backend.next_version()))
    assert standin.isvc["spec"]["predictor"]["model"]["storageUri"] == BASE_URI


@pytest.mark.parametrize("where", ["annotation", "cluster default"])
def test_canary_is_refused_where_kserve_would_ignore_it(kube, tmp_path, saved_model, where):
    standin = kube(mode_annotation="RawDeployment") if where == "annotation" else kube(mode_annotation="", default_mode="RawDeployment")
    backend = _backend(standin, tmp_path, _canary(), _pods_source(standin))
    with pytest.raises(CanaryUnsupportedError, match="RawDeployment mode, where KServe ignores "
                                                     "canaryTrafficPercent"):
        backend.stage(str(saved_model), backend.next_version())
    assert standin.patches == [] and standin.pod_selectors == []  # refused before any step
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
    _serving_version_1(tmp_path)
    with Traffic(standin, version=2, canary_answers=(_errors_only, _errors_only)):
        selector = Selector(store, _backend(standin, tmp_path, _canary(),
                                           _pods_source(standin)),
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


def test_a_rollback_under_a_canary_rollout_serves_the_previous_model_at_once(kube, tmp_path,
                                                                            saved_model):
    standin = kube()  # no pod: a canary step would be rolled back for want of figures
    backend = _backend(standin, tmp_path, _canary(step_seconds=60), _pods_source(standin))
    backend.publish(backend.stage(str(saved_model), backend.next_version()), at_once=True)
    assert standin.patches == [{"canaryTrafficPercent": None,
                                "model": {"storageUri": f"{RELEASES}/1"}}]
    assert standin.pod_selectors == []  # nothing judged
