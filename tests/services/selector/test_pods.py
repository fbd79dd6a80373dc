"""PodsSource reads every Running, Ready predictor pod the Kubernetes API lists (the stand-in API
server, tests/services/selector/kube_standin.py) and adds their /metrics up per version; real
model-server-like pods on 127.0.0.1 serve prometheus_client's text. Counters that start again
and pods that go away never make a window negative or lose what was counted."""

import logging
import math

import pytest

from core import kube
from services.selector.errors import LiveMetricsError
from services.selector.pods import PodsSource, predictor_selector
from tests.services.selector.kube_standin import PODS_PATH, TOKEN, KubeStandIn
from tests.services.selector.pod_servers import MetricsPod

pytestmark = [pytest.mark.integration]
SELECTOR = "serving.kserve.io/inferenceservice=fashion-mnist,component=predictor"


@pytest.fixture
def standin():
    standin = KubeStandIn().start()
    yield standin
    standin.stop()
    assert standin.violations == [], standin.violations


@pytest.fixture
def pods():
    started = []

    def start(n):
        new = [MetricsPod() for _ in range(n)]
        started.extend(new)
        return new

    yield start
    for pod in started:
        pod.stop()


def _source(standin, token=TOKEN):
    return PodsSource(kube.api_client(standin.server.url, token), "retrain",
                      predictor_selector("fashion-mnist"))


def test_every_ready_predictor_pods_figures_are_summed_per_version(standin, pods):
    a, b, c, elsewhere, unready = pods(5)
    for i, pod in enumerate((a, b, c)):
        standin.add_pod(f"p{i}", pod.port, revision=1)
    standin.add_pod("other-model", elsewhere.port, labels={
        "serving.kserve.io/inferenceservice": "another-model"})
    standin.add_pod("starting", unready.port, ready=False)
    a.answer(1, n=10, label=3)
    a.answer(1, code=503, n=2)
    b.answer(1, n=20, label=4, seconds=0.2)
    b.answer(2, n=5, label=1)
    c.answer(1, code=500, n=4)
    c.answer(1, n=1, label=3)
    for decoy in (elsewhere, unready):
        decoy.answer(1, code=500, n=100)

    snapshot = _source(standin).scrape()

    one = snapshot.of(1)
    assert (one.requests, one.errors, one.longest_error_streak) == (37, 6, 4)
    assert one.classes == {3: 11, 4: 20}
    assert one.latency[math.inf] == 37 and one.latency[0.005] == 17 and one.latency[0.2] == 37
    assert snapshot.of(2).requests == 5 and snapshot.of(2).classes == {1: 5}
    assert set(snapshot.versions) == {1, 2}
    # the API was asked for the predictor's pods by label, once; only the ready ones were read,
    # each on its server's port (not the queue-proxy's)
    assert [(v, p) for v, p, _ in standin.requests] == [("GET", PODS_PATH)]
    assert standin.pod_selectors == [SELECTOR]
    assert (a.scrapes, b.scrapes, c.scrapes, elsewhere.scrapes, unready.scrapes) == (1, 1, 1, 0, 0)


@pytest.mark.parametrize("kubelet_counts_it", [True, False])
def test_a_restarted_server_neither_loses_nor_subtracts_what_it_counted(standin, pods,
                                                                       kubelet_counts_it):
    a, b = pods(2)
    pod_a = standin.add_pod("a", a.port)
    standin.add_pod("b", b.port)
    a.answer(1, n=30)
    b.answer(1, n=10)
    source = _source(standin)
    start = source.scrape()
    a.answer(1, n=5)  # counted before the restart, read by no scrape
    b.answer(1, n=2)
    middle = source.scrape()
    a.answer(1, n=3)
    a.restart()  # its counters start again: 0
    if kubelet_counts_it:
        standin.restart_container(pod_a)
    a.answer(1, n=4)
    a.answer(1, code=503, n=2)
    end = source.scrape()

    window = end.of(1).minus(start.of(1))
    # what a counted after the last read before the restart (3) is gone with its process, as
    # with Prometheus's increase(); everything else is there, and nothing is negative
    assert window.requests == 5 + 2 + 6 and window.errors == 2
    assert end.of(1).minus(middle.of(1)).requests == 6
    assert end.of(1).requests >= middle.of(1).requests >= start.of(1).requests


def test_a_pod_that_goes_away_keeps_what_it_counted(standin, pods):
    a, b, c = pods(3)
    gone = standin.add_pod("a", a.port)
    standin.add_pod("b", b.port)
    a.answer(1, n=30)
    b.answer(1, n=10)
    source = _source(standin)
    start = source.scrape()
    a.answer(1, n=7)
    source.scrape()
    standin.remove_pod(gone)  # scaled down; its replacement starts counting from zero
    standin.add_pod("c", c.port)
    c.answer(1, n=4)
    b.answer(1, n=1)
    end = source.scrape()
    assert end.of(1).minus(start.of(1)).requests == 7 + 4 + 1
    assert end.of(1).requests == 30 + 10 + 7 + 4 + 1


def test_a_pod_that_cannot_be_read_is_skipped_for_that_poll(standin, pods, caplog):
    a, b, c = pods(3)
    for name, pod in (("a", a), ("b", b), ("c", c)):
        standin.add_pod(name, pod.port)
        pod.answer(1, n=10)
    source = _source(standin)
    source.scrape()
    c.stop()
    a.answer(1, n=1)
    with caplog.at_level(logging.WARNING, logger="services.selector.pods"):
        snapshot = source.scrape()
    assert snapshot.of(1).requests == 31  # c's 10 as last read, a's new one
    assert "skipping pod c (127.0.0.1) this poll: cannot read http://127.0.0.1:" in caplog.text


def test_no_readable_pod_is_an_error_naming_each(standin, pods):
    a, b = pods(2)
    standin.add_pod("a", a.port)
    standin.add_pod("b", b.port)
    a.stop()
    b.stop()
    with pytest.raises(LiveMetricsError, match=r"no serving pod's metrics could be read: "
                                               r"a: cannot read .*; b: cannot read"):
        _source(standin).scrape()


def test_no_ready_pod_and_a_refusing_api_are_errors(standin, pods):
    [a] = pods(1)
    standin.add_pod("a", a.port, ready=False)
    with pytest.raises(LiveMetricsError, match=f"no Running, Ready pod in retrain matches {SELECTOR}"):
        _source(standin).scrape()
    with pytest.raises(LiveMetricsError, match="cannot list the serving pods: Kubernetes API "
                                               "answered 401 to GET /api/v1/namespaces/retrain/pods"):
        _source(standin, token="wrong").scrape()
    standin.violations.clear()  # refused as it should be
