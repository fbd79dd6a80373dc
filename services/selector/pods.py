"""The guard's reading on a cluster: every predictor pod's ``/metrics``, added up.

KServe labels each predictor pod with its InferenceService
(``serving.kserve.io/inferenceservice=<name>``) and ``component=predictor``; Knative adds the
revision (``serving.knative.dev/revision``). ``PodsSource`` lists the Running, Ready pods
through the Kubernetes API, scrapes each on its server's metrics port (``metrics_port``) and
sums the figures per version: each pod labels what it counts with the version it serves, so
one summed read separates the canary from the version it would replace, however many pods each
has.

Counters are kept per pod (by its UID) as increases, as Prometheus's ``increase()`` keeps them:
a pod whose counters start again (its container restarted) adds what it counted since, a pod
that is gone (scaled down, replaced) keeps what it counted while it was seen, so summed figures
never go down and a window between two reads is never negative nor lost. A pod first read after
the source's first read adds everything it counted only if its server started after the
previous read (a new pod: all of it is new); otherwise (a pod that could not be read before)
it starts from what it shows now, since what it counted earlier belongs to earlier windows. A
pod that cannot be read in one poll is skipped for that poll; none readable is a
``LiveMetricsError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from core import kube
from services.selector.errors import LiveMetricsError
from services.selector.live import Snapshot, VersionStats, read_metrics

log = logging.getLogger(__name__)

ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
PREDICTOR_CONTAINER = "kserve-container"  # the ServingRuntime's container, as KServe names it
# the model server's own metrics port, as KServe annotates the pod from its ServingRuntime
# (``prometheus.io/port`` may name Knative's queue-proxy or its aggregating sidecar instead)
PORT_ANNOTATION = "prometheus.kserve.io/port"
GRPC_PORT_NAMES = ("h2c", "grpc")  # ports that speak HTTP/2 or gRPC, never the metrics
# Kubernetes' times are whole seconds: a server started up to this long before a read may have
# started after it
TIME_RESOLUTION = 1.0

Figures = Mapping[int, VersionStats]  # one server's counters, by version


def predictor_selector(name: str) -> str:
    """The label selector of every predictor pod of InferenceService ``name`` (all revisions:
    during a canary, the canary's pods and the previous revision's)."""
    return f"{ISVC_LABEL}={name},component=predictor"


@dataclass(frozen=True)
class Pod:
    uid: str
    name: str
    ip: str
    port: int
    restarts: int  # of its serving container: a change means its counters started again
    started: float | None = None  # when its serving container (else the pod) started, epoch s


def metrics_port(item: Any, container: str, default_port: int) -> int:
    """Where pod ``item``'s model server answers ``/metrics``: the port KServe's annotation
    names, else ``container``'s first declared port not named for HTTP/2 or gRPC (``h2c``,
    ``grpc…``: Knative routes such a port as HTTP/2), else ``default_port``."""
    annotated = (item.metadata.annotations or {}).get(PORT_ANNOTATION, "")
    if annotated.isdigit():
        return int(annotated)
    for c in item.spec.containers:
        if c.name != container:
            continue
        for port in c.ports or ():
            if not (port.name or "").lower().startswith(GRPC_PORT_NAMES):
                return int(port.container_port)
    return default_port


def _started(item: Any, container: str) -> float | None:
    """When ``container`` last started in pod ``item`` (else when the pod did), epoch seconds."""
    for s in item.status.container_statuses or ():
        running = s.state.running if s.name == container and s.state else None
        if running is not None and running.started_at is not None:
            return float(running.started_at.timestamp())
    start = item.status.start_time
    return None if start is None else float(start.timestamp())


def ready_pods(items: Iterable[Any], container: str, default_port: int) -> list[Pod]:
    """The Running pods with a Ready condition and an IP, from ``kubernetes`` client pods,
    each with its metrics port (``metrics_port``)."""
    found = []
    for item in items:
        status = item.status
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())
        if status.phase != "Running" or not ready or not status.pod_ip:
            continue
        restarts = next((s.restart_count for s in status.container_statuses or ()
                         if s.name == container), 0)
        found.append(Pod(item.metadata.uid, item.metadata.name, status.pod_ip,
                         metrics_port(item, container, default_port), restarts,
                         _started(item, container)))
    return found


@dataclass(frozen=True)
class Tally:
    """What one pod has counted while it was watched."""

    restarts: int
    last: Figures  # its counters at the last read
    total: Figures  # their increases, added up since it was first seen


def first_tally(restarts: int, figures: Figures, started: float | None,
                previous: float | None) -> Tally:
    """A pod's first read, ``figures``: at the source's first read (``previous`` None) all it
    counted (the reference later reads are compared with); later, all of it only if its server
    started after the ``previous`` read, else nothing yet (what it counted before belongs to
    earlier windows: a pod that could not be read then, or was not ready)."""
    if previous is None or (started is not None and started > previous - TIME_RESOLUTION):
        return Tally(restarts, figures, figures)
    return Tally(restarts, figures, {})


def tally(seen: Tally, restarts: int, figures: Figures) -> Tally:
    """``seen`` after a read of ``figures``: a restarted pod (its restart count moved, or a
    counter went down) counts its counters anew."""
    restarted = restarts != seen.restarts
    total = dict(seen.total)
    for version, now in figures.items():
        before = seen.last.get(version, VersionStats())
        increase = now if restarted else now.minus(before)
        total[version] = total.get(version, VersionStats()).plus(increase)
    return Tally(restarts, figures, total)


def summed(tallies: Iterable[Tally]) -> dict[int, VersionStats]:
    """Every pod's totals added up per version (streaks: the longest)."""
    out: dict[int, VersionStats] = {}
    for t in tallies:
        for version, stats in t.total.items():
            out[version] = out.get(version, VersionStats()).plus(stats)
    return dict(sorted(out.items()))


class PodsSource:
    """Every Running, Ready pod matching ``label_selector`` in ``namespace``, its
    ``/metrics`` read and added up per version (a ``live.MetricsSource``). ``api`` is a
    ``kubernetes.client.ApiClient``; the service account needs ``list`` on pods."""

    def __init__(self, api: Any, namespace: str, label_selector: str, port: int = 8080,
                 path: str = "/metrics", timeout: float = 2.0,
                 container: str = PREDICTOR_CONTAINER,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self.namespace, self.label_selector = namespace, label_selector
        self._port, self._path, self._timeout = port, path, timeout
        self._container = container
        self._clock, self._wall = clock, wall
        self._read_at: float | None = None  # when the previous read began (wall clock)
        self._tallies: dict[str, Tally] = {}  # the pods listed, by UID
        self._gone: dict[int, VersionStats] = {}  # what pods no longer listed counted
        self._lock = threading.Lock()  # the canary and the guard's watch may read at once

    def pods(self) -> tuple[list[Pod], set[str]]:
        """The pods to read, and the UIDs of every pod listed (ready or not)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={self.label_selector}"
        try:
            listed = kube.call("GET", path, self._core.list_namespaced_pod, self._timeout,
                               namespace=self.namespace, label_selector=self.label_selector)
        except kube.KubeError as exc:
            raise LiveMetricsError(f"cannot list the serving pods: {exc}") from None
        return (ready_pods(listed.items, self._container, self._port),
                {item.metadata.uid for item in listed.items})

    def scrape(self) -> Snapshot:
        with self._lock:
            return self._scrape()

    def _scrape(self) -> Snapshot:
        began = self._wall()
        pods, listed = self.pods()
        self._forget_all_but(listed)
        if not pods:
            raise LiveMetricsError(f"no Running, Ready pod in {self.namespace} matches "
                                   f"{self.label_selector}")
        with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
            read = list(pool.map(self._read, pods))
        at = self._clock()
        problems = []
        for pod, (figures, problem) in zip(pods, read):
            if figures is None:
                problems.append(f"{pod.name}: {problem}")
                log.warning("skipping pod %s (%s) this poll: %s", pod.name, pod.ip, problem)
                continue
            seen = self._tallies.get(pod.uid)
            self._tallies[pod.uid] = (
                first_tally(pod.restarts, figures, pod.started, self._read_at) if seen is None
                else tally(seen, pod.restarts, figures))
        if len(problems) == len(pods):
            raise LiveMetricsError(f"no serving pod's metrics could be read: {'; '.join(problems)}")
        self._read_at = began
        return Snapshot(at, summed([*self._tallies.values(), Tally(0, {}, self._gone)]))

    def _forget_all_but(self, listed: set[str]) -> None:
        """Pods no longer listed (deleted) keep what they counted, folded into one total; a
        pod listed but not ready keeps its tally, to go on from when it is read again."""
        for uid in set(self._tallies) - listed:
            self._gone = summed([Tally(0, {}, self._gone), self._tallies.pop(uid)])

    def _read(self, pod: Pod) -> tuple[Figures | None, str]:
        try:
            return read_metrics(f"http://{pod.ip}:{pod.port}{self._path}", self._timeout), ""
        except LiveMetricsError as exc:
            return None, str(exc)

    def __repr__(self) -> str:
        return f"PodsSource({self.namespace!r}, {self.label_selector!r})"
