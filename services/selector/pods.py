"""The guard's reading on a cluster: every predictor pod's ``/metrics``, added up.

KServe labels each predictor pod with its InferenceService
(``serving.kserve.io/inferenceservice=<name>``) and ``component=predictor``; Knative adds the
revision (``serving.knative.dev/revision``). ``PodsSource`` lists the Running, Ready pods
through the Kubernetes API, scrapes each on its container's port and sums the figures per
version: each pod labels what it counts with the version it serves, so one summed read
separates the canary from the version it would replace, however many pods each has.

Counters are kept per pod (by its UID) as increases, as Prometheus's ``increase()`` keeps them:
a pod whose counters start again (its container restarted) adds what it counted since, a pod
that is gone (scaled down, replaced) keeps what it counted while it was seen, so summed figures
never go down and a window between two reads is never negative nor lost. A pod that cannot be
read in one poll is skipped for that poll; none readable is a ``LiveMetricsError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from core import kube
from services.selector.errors import LiveMetricsError
from services.selector.live import Snapshot, VersionStats, parse_metrics

log = logging.getLogger(__name__)

ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
PREDICTOR_CONTAINER = "kserve-container"  # the ServingRuntime's container, as KServe names it

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


def ready_pods(items: Iterable[Any], container: str, default_port: int) -> list[Pod]:
    """The Running pods with a Ready condition and an IP, from ``kubernetes`` client pods;
    each one's port is ``container``'s first declared one (else ``default_port``)."""
    found = []
    for item in items:
        status = item.status
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())
        if status.phase != "Running" or not ready or not status.pod_ip:
            continue
        port, restarts = default_port, 0
        for c in item.spec.containers:
            if c.name == container and c.ports:
                port = c.ports[0].container_port
        for s in status.container_statuses or ():
            if s.name == container:
                restarts = s.restart_count
        found.append(Pod(item.metadata.uid, item.metadata.name, status.pod_ip, port, restarts))
    return found


@dataclass(frozen=True)
class Tally:
    """What one pod has counted while it was watched."""

    restarts: int
    last: Figures  # its counters at the last read
    total: Figures  # their increases, added up since it was first seen


def tally(seen: Tally | None, restarts: int, figures: Figures) -> Tally:
    """``seen`` after a read of ``figures``: a pod first seen counts all it has counted; a
    restarted one (its restart count moved, or a counter went down) counts its counters anew."""
    if seen is None:
        return Tally(restarts, figures, figures)
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self.namespace, self.label_selector = namespace, label_selector
        self._port, self._path, self._timeout = port, path, timeout
        self._container = container
        self._clock = clock
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
            self._tallies[pod.uid] = tally(self._tallies.get(pod.uid), pod.restarts, figures)
        if len(problems) == len(pods):
            raise LiveMetricsError(f"no serving pod's metrics could be read: {'; '.join(problems)}")
        return Snapshot(at, summed([*self._tallies.values(), Tally(0, {}, self._gone)]))

    def _forget_all_but(self, listed: set[str]) -> None:
        """Pods no longer listed (deleted) keep what they counted, folded into one total; a
        pod listed but not ready keeps its tally, to go on from when it is read again."""
        for uid in set(self._tallies) - listed:
            self._gone = summed([Tally(0, {}, self._gone), self._tallies.pop(uid)])

    def _read(self, pod: Pod) -> tuple[Figures | None, str]:
        url = f"http://{pod.ip}:{pod.port}{self._path}"
        try:
            response = httpx.get(url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            return None, f"cannot read {url}: {exc or type(exc).__name__}"
        if response.status_code != 200:
            return None, f"{url} answered {response.status_code}"
        try:
            return parse_metrics(response.text), ""
        except LiveMetricsError as exc:
            return None, f"{url}: {exc}"

    def __repr__(self) -> str:
        return f"PodsSource({self.namespace!r}, {self.label_selector!r})"
