"""The KServe promotion backend: the champion goes to an ``InferenceService`` through the
Kubernetes API, replaced at once or rolled out as a canary.

Each release is copied to its own folder of the model volume, ``<repo>/releases/<name>/<v>/<v>/``
(the TF Serving layout KServe's storage initializer expects under a ``storageUri``), and the
InferenceService's ``spec.predictor.model.storageUri`` is pointed at it with a JSON merge
patch. A canary sets ``canaryTrafficPercent`` step by step, reads the canary's health between
steps, and rolls back (``canaryTrafficPercent: 0`` then the old ``storageUri``) when its error
rate or latency crosses a threshold. KServe honours ``canaryTrafficPercent`` only in the
Serverless (Knative) deployment mode; in RawDeployment it is silently ignored, so a canary is
refused there before anything changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from services.selector.backends import Staged, versions
from services.selector.errors import SelectorError

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io/v1beta1"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
CANARY_MODES = frozenset({"Serverless", "Knative"})  # KServe 0.15 renamed Serverless to Knative
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KServeError(SelectorError):
    """The Kubernetes API refused or the InferenceService did not become ready."""


class CanaryUnsupportedError(KServeError):
    exit_code = 2


class CanaryRolledBackError(KServeError):
    """The canary was unhealthy; the previous model serves all traffic again."""


class KubeApi:
    """The few calls the backend makes, over HTTPS with the pod's service-account token
    (or a given URL and token: a kubeconfig-less setup and the tests)."""

    def __init__(self, base_url: str, token: str | None = None, verify: bool | str = True,
                 timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, verify=verify, timeout=timeout)

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KServeError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set "
                              "(set RETRAIN_KUBE_API_URL to reach an API server from outside)")
        return cls(f"https://{host}:{port}", (SERVICE_ACCOUNT / "token").read_text().strip(),
                   str(SERVICE_ACCOUNT / "ca.crt"))

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise KServeError(f"Kubernetes API unreachable ({method} {path}): {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise KServeError(f"Kubernetes API answered {response.status_code} to {method} {path}: "
                              f"{message}")
        return response.json()  # type: ignore[no-any-return]

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", path, json=body,
                          headers={"Content-Type": "application/merge-patch+json"})


@dataclass(frozen=True)
class Health:
    requests: float
    errors: float  # answers with a 5xx status
    p99_seconds: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class CanaryHealth(Protocol):
    """How a canary is doing: ``start`` opens a window, calling closes it and says what
    happened in it."""

    def start(self) -> None: ...

    def __call__(self) -> Health: ...


class ScrapedHealth:
    """The canary's health over a window, from two scrapes of its Prometheus ``/metrics``:
    requests and 5xx answers from a counter labelled ``code``, p99 from a latency histogram.
    The defaults are the local model server's metric names."""

    def __init__(self, url: str, requests_metric: str = "retrain_serving_requests_total",
                 latency_metric: str = "retrain_serving_latency_seconds") -> None:
        self.url = url
        self._requests = requests_metric
        self._latency = latency_metric
        self._last: tuple[float, float, dict[float, float]] | None = None

    def _scrape(self) -> tuple[float, float, dict[float, float]]:
        try:
            text = httpx.get(self.url, timeout=5).text
        except httpx.HTTPError as exc:
            raise KServeError(f"cannot read the canary's metrics at {self.url}: {exc}") from None
        total = errors = 0.0
        buckets: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(self._requests + "{"):
                value = float(line.rsplit(" ", 1)[1])
                code = re.search(r'code="(\d+)"', line)
                total += value
                errors += value if code and code.group(1).startswith("5") else 0.0
            elif line.startswith(self._latency + "_bucket{"):
                le = re.search(r'le="([^"]+)"', line)
                if le:
                    bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                    buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return total, errors, buckets

    def start(self) -> None:
        self._last = self._scrape()

    def __call__(self) -> Health:
        before = self._last or (0.0, 0.0, {})
        now = self._last = self._scrape()
        requests, errors = now[0] - before[0], now[1] - before[1]
        window = {b: c - before[2].get(b, 0.0) for b, c in now[2].items()}
        return Health(requests, errors, _quantile(window, 0.99))


def _quantile(cumulative: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the q-th observation (a conservative p99)."""
    total = cumulative.get(math.inf, 0.0)
    if total <= 0:
        return None
    for bound in sorted(cumulative):
        if cumulative[bound] >= q * total:
            return bound
    return math.inf


@dataclass(frozen=True)
class Rollout:
    strategy: str = "replace"  # or "canary"
    steps: tuple[int, ...] = (10, 50)  # canary traffic percentages before 100
    step_seconds: float = 60.0  # time at each step before its health is judged
    max_error_rate: float = 0.01
    max_p99_seconds: float = 0.5
    min_requests: int = 20  # fewer requests in a step: the step is judged on errors only
    ready_timeout: float = 300.0
    poll_seconds: float = 1.0  # between looks at the InferenceService's status

    def __post_init__(self) -> None:
        if self.strategy not in ("replace", "canary"):
            raise ValueError(f"rollout strategy must be replace or canary, not {self.strategy!r}")
        if not self.steps or any(not 0 < s < 100 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"canary steps must rise within 1..99, got {list(self.steps)}")


class KServeBackend:
    def __init__(self, api: KubeApi, namespace: str, name: str, repo: Path, storage_prefix: str,
                 rollout: Rollout = Rollout(), health: CanaryHealth | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._api = api
        self._path = f"/apis/{GROUP}/namespaces/{namespace}/inferenceservices/{name}"
        self.releases = repo / "releases" / name
        self._prefix = storage_prefix.rstrip("/") + f"/releases/{name}"
        self._rollout = rollout
        self._health = health
        self._sleep = sleep
        if rollout.strategy == "canary" and health is None:
            raise ValueError("a canary rollout needs a health source (the canary's metrics URL)")

    # PromotionBackend ------------------------------------------------------------------------
    def next_version(self) -> int:
        return (versions(self.releases) or [0])[-1] + 1

    def stage(self, model_uri: str, version: int) -> Staged:
        """Check the InferenceService first (a canary the cluster would ignore is refused here,
        before anything changes), then copy the model to its release folder."""
        isvc = self._api.get(self._path)
        if self._rollout.strategy == "canary":
            mode = self.deployment_mode(isvc)
            if mode not in CANARY_MODES:
                raise CanaryUnsupportedError(
                    f"InferenceService {isvc['metadata']['name']} runs in {mode} mode, where KServe "
                    "ignores canaryTrafficPercent: refusing a canary rollout that would silently "
                    "send all traffic to the new model; use the replace strategy, or the "
                    "Serverless mode")
        final = self.releases / str(version) / str(version)
        tmp = self.releases / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(model_uri, tmp / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Staged(version, str(final), str(tmp))

    def publish(self, staged: Staged) -> None:
        Path(staged.handle).rename(Path(staged.location).parent)
        uri = f"{self._prefix}/{staged.version}"
        isvc = self._api.get(self._path)
        previous = self._storage_uri(isvc)
        if self._rollout.strategy == "canary" and previous and previous != uri:
            self._canary(uri, previous)
        else:
            self._patch({"canaryTrafficPercent": None, "model": {"storageUri": uri}})
            self._wait_ready()
            log.info("InferenceService now serves %s", uri)

    def discard(self, staged: Staged) -> None:
        shutil.rmtree(staged.handle, ignore_errors=True)

    # -----------------------------------------------------------------------------------------
    def deployment_mode(self, isvc: dict[str, Any]) -> str:
        """The ISVC's annotation, else the cluster default from KServe's configuration."""
        annotations = isvc.get("metadata", {}).get("annotations") or {}
        if MODE_ANNOTATION in annotations:
            return str(annotations[MODE_ANNOTATION])
        config = self._api.get("/api/v1/namespaces/kserve/configmaps/inferenceservice-config")
        try:
            deploy = json.loads(config.get("data", {}).get("deploy", "{}"))
        except ValueError:
            raise KServeError("KServe's inferenceservice-config has an unreadable 'deploy' entry") from None
        return str(deploy.get("defaultDeploymentMode", "Serverless"))

    @staticmethod
    def _storage_uri(isvc: dict[str, Any]) -> str | None:
        return isvc.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")

    def _patch(self, predictor: dict[str, Any]) -> None:
        self._api.merge_patch(self._path, {"spec": {"predictor": predictor}})

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self._rollout.ready_timeout
        while True:
            isvc = self._api.get(self._path)
            status = isvc.get("status", {})
            predictor = status.get("components", {}).get("predictor", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions", []))
            if (ready and status.get("observedGeneration", 0) >= isvc["metadata"].get("generation", 0)
                    and predictor.get("latestReadyRevision") == predictor.get("latestCreatedRevision")):
                return isvc
            if time.monotonic() > deadline:
                raise KServeError(f"InferenceService not ready after {self._rollout.ready_timeout:.0f}s")
            self._sleep(self._rollout.poll_seconds)

    def _canary(self, uri: str, previous: str) -> None:
        assert self._health is not None
        for percent in self._rollout.steps:
            self._patch({"canaryTrafficPercent": percent, "model": {"storageUri": uri}})
            self._wait_ready()
            self._health.start()
            self._sleep(self._rollout.step_seconds)
            health = self._health()
            problem = self._judge(health)
            log.info("canary at %d%%: %.0f requests, error rate %.3f, p99 %s — %s", percent,
                     health.requests, health.error_rate, health.p99_seconds, problem or "healthy")
            if problem:
                self._patch({"canaryTrafficPercent": 0})  # all traffic back to the last good one
                self._patch({"canaryTrafficPercent": None, "model": {"storageUri": previous}})
                raise CanaryRolledBackError(f"canary rolled back at {percent}%: {problem}; "
                                            f"{previous} serves all traffic again")
        self._patch({"canaryTrafficPercent": None})  # the canary takes all traffic
        self._wait_ready()

    def _judge(self, health: Health) -> str | None:
        r = self._rollout
        if health.errors and health.error_rate > r.max_error_rate:
            return f"error rate {health.error_rate:.3f} > {r.max_error_rate:.3f}"
        if (health.requests >= r.min_requests and health.p99_seconds is not None
                and health.p99_seconds > r.max_p99_seconds):
            return f"p99 latency {health.p99_seconds:.3f}s > {r.max_p99_seconds:.3f}s"
        return None
