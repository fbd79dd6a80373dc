"""PodsSource reads every Running, Ready predictor pod the Kubernetes API lists (the stand-in API
server, tests/services/selector/kube_standin.py) and adds their /metrics up per version; real
model-server-like pods on 127.0.0.1 serve prometheus_client's text. Counters that start again
and pods that go away never make a window negative or lose what was counted; a pod first read
late adds only what is new; the metrics port is the server's HTTP one, whatever comes first."""

import logging
import math
from datetime import UTC, datetime

import pytest

from core import kube
from services.selector.errors import LiveMetricsError
from services.selector.pods import PodsSource, predictor_selector
from tests.services.selector.kube_standin import PODS_PATH, TOKEN, KubeStandIn
from tests.services.selector.pod_servers import MetricsPod

pytestmark = [pytest.mark.integration]
SELECTOR = "serving.kserve.io/inferenceservice=fashion-mnist,component=predictor"
NOW = 1.8e9  # the source's wall clock, epoch seconds (fixed: every read begins then)


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
                      predictor_selector("fashion-mnist"), wall=lambda: NOW)


def _time(epoch):
    """A Kubernetes timestamp (RFC 3339, whole seconds)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _started(pod, epoch, container=False):
    """What the API server says of when ``pod`` (or its server's container) started."""
    if container:
        for status in pod["status"]["containerStatuses"]:
            if status["name"] == "kserve-container":
                status["state"] = {"running": {"startedAt": _time(epoch)}}
    else:
        pod["status"]["startTime"] = _time(epoch)
    return pod


def test_every_ready_predictor_pods_figures_are_summed_per_version(standin, pods):
    a, b, c, elsewhere, unready = pods(5)
    for i, pod in enumerate((a, b, c)):
        standin.add_pod(f"p{i}", pod.port, revision=1)
    standin.add_pod("other-model", elsewhere.port, labels={
        "serving.kserve.io/inferenceservice": "another-model"})
    standin.add_pod("starting", unready.port, ready=False)
    a.answer(1, n=10, label=3)
    a.refuse(1, code=503, n=2)
    b.refuse(1, code=429, n=1)
    b.answer(1, n=20, label=4, seconds=0.2)
    b.answer(2, n=5, label=1)
    c.answer(1, code=500, n=4)
    c.answer(1, n=1, label=3)
    for decoy in (elsewhere, unready):
        decoy.answer(1, code=500, n=100)

    snapshot = _source(standin).scrape()

    one = snapshot.of(1)
    assert (one.requests, one.errors, one.longest_error_streak) == (35, 4, 4)
    assert one.refused == 3  # refusals at the door: shown, never errors
    assert one.classes == {3: 11, 4: 20}
    assert one.latency[math.inf] == 35 and one.latency[0.005] == 15 and one.latency[0.2] == 35
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
    a.answer(1, code=500, n=2)
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
    _started(standin.add_pod("c", c.port), NOW + 5)
    c.answer(1, n=4)
    b.answer(1, n=1)
    end = source.scrape()
    assert end.of(1).minus(start.of(1)).requests == 7 + 4 + 1
    assert end.of(1).requests == 30 + 10 + 7 + 4 + 1


def test_a_pod_first_read_late_adds_only_what_it_counted_since_the_previous_read(standin, pods):
    """Unreadable at the first read (too busy to answer in time), a pod started long ago must
    not pour its whole history into the next window."""
    a, b = pods(2)
    standin.add_pod("a", a.port)
    _started(standin.add_pod("b", b.port), NOW - 3600)
    a.answer(1, n=30)
    b.answer(1, n=1000)
    b.failing = True
    source = _source(standin)
    start = source.scrape()
    a.answer(1, n=5)
    b.answer(1, n=7)  # before b's first read: not known to be in this window, left out
    b.failing = False
    middle = source.scrape()
    b.answer(1, n=3)
    end = source.scrape()
    assert middle.of(1).minus(start.of(1)).requests == 5
    assert end.of(1).minus(middle.of(1)).requests == 3


@pytest.mark.parametrize("container", [False, True], ids=["pod-started", "container-started"])
def test_a_pod_whose_server_started_after_the_previous_read_adds_all_it_counted(
        standin, pods, container):
    a, b = pods(2)
    standin.add_pod("a", a.port)
    late = _started(standin.add_pod("b", b.port, ready=False), NOW - 3600)
    a.answer(1, n=30)
    source = _source(standin)
    start = source.scrape()
    _started(late, NOW + 2, container=container)  # its server (re)started since: all new
    late["status"]["conditions"][0]["status"] = "True"
    b.answer(1, n=4)
    end = source.scrape()
    assert end.of(1).minus(start.of(1)).requests == 4


@pytest.mark.parametrize("how", ["h2c-first", "annotation"])
def test_the_metrics_are_read_on_the_servers_http_port_not_its_grpc_one(standin, pods, how):
    [a] = pods(1)
    pod = standin.add_pod("a", a.port)
    server = pod["spec"]["containers"][1]
    if how == "h2c-first":  # a gRPC InferenceService: its h2c port declared first
        server["ports"].insert(0, {"name": "h2c", "containerPort": 9, "protocol": "TCP"})
    else:  # KServe's annotation, from the ServingRuntime, names the port
        server["ports"] = [{"name": "h2c", "containerPort": 9, "protocol": "TCP"}]
        pod["metadata"]["annotations"] = {"prometheus.kserve.io/port": str(a.port)}
    a.answer(1, n=3)
    assert _source(standin).scrape().of(1).requests == 3
    assert a.scrapes == 1


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
