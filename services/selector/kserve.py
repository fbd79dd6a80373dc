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
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from core import kube
from repository.layout import next_version
from services.selector.backends import Staged
from services.selector.errors import SelectorError

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
CANARY_MODES = frozenset({"Serverless", "Knative"})  # KServe 0.15 renamed Serverless to Knative


class KServeError(SelectorError):
    """The Kubernetes API refused or the InferenceService did not become ready."""


class CanaryUnsupportedError(KServeError):
    exit_code = 2


class CanaryRolledBackError(KServeError):
    """The canary was unhealthy; the previous model serves all traffic again."""


class KubeClient:
    """The few Kubernetes calls the backend makes, through the ``kubernetes`` client: read and
    merge-patch the InferenceService, read KServe's cluster configuration."""

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._timeout = timeout

    def _call(self, verb: str, path: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return kube.call(verb, path, method, self._timeout, **kwargs)
        except kube.KubeError as exc:
            raise KServeError(str(exc)) from None

    def get_isvc(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", isvc_path(namespace, name), self._custom.get_namespaced_custom_object,
                          group=GROUP, version=VERSION, namespace=namespace, plural=PLURAL,
                          name=name)  # type: ignore[no-any-return]

    def patch_isvc(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7396: a null removes the field)."""
        return self._call("PATCH", isvc_path(namespace, name),
                          self._custom.patch_namespaced_custom_object, group=GROUP,
                          version=VERSION, namespace=namespace, plural=PLURAL, name=name,
                          body=body)  # type: ignore[no-any-return]

    def config_map_data(self, namespace: str, name: str) -> dict[str, str]:
        found = self._call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}",
                           self._core.read_namespaced_config_map, name=name, namespace=namespace)
        return dict(found.data or {})


def isvc_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def kube_client(api_url: str | None = None, token: str | None = None) -> KubeClient:
    """A client for ``api_url`` with a bearer ``token`` (a kubeconfig-less setup and the tests),
    or, with no URL, for the API server of the cluster this pod runs in (its service account)."""
    return KubeClient(kube.api_client(api_url, token))


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
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(self.url, timeout=5).text
        except httpx.HTTPError as exc:
            raise KServeError(f"cannot read the canary's metrics at {self.url}: {exc}") from None
        total = errors = 0.0
        buckets: dict[float, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == self._requests:
                        total += sample.value
                        if sample.labels.get("code", "").startswith("5"):
                            errors += sample.value
                    elif sample.name == self._latency + "_bucket" and "le" in sample.labels:
                        bound = float(sample.labels["le"])  # "+Inf" parses to infinity
                        buckets[bound] = buckets.get(bound, 0.0) + sample.value
        except ValueError as exc:
            raise KServeError(f"the canary's metrics at {self.url} are not Prometheus text: "
                              f"{exc}") from None
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
    def __init__(self, api: KubeClient, namespace: str, name: str, repo: Path, storage_prefix: str,
                 rollout: Rollout = Rollout(), health: CanaryHealth | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._api = api
        self._namespace, self._name = namespace, name
        self.releases = repo / "releases" / name
        self._prefix = storage_prefix.rstrip("/") + f"/releases/{name}"
        self._rollout = rollout
        self._health = health
        self._sleep = sleep
        if rollout.strategy == "canary" and health is None:
            raise ValueError("a canary rollout needs a health source (the canary's metrics URL)")

    # PromotionBackend ------------------------------------------------------------------------
    def next_version(self) -> int:
        return next_version(self.releases)

    def stage(self, model_uri: str, version: int) -> Staged:
        """Check the InferenceService first (a canary the cluster would ignore is refused here,
        before anything changes), then copy the model to its release folder."""
        isvc = self._api.get_isvc(self._namespace, self._name)
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
        isvc = self._api.get_isvc(self._namespace, self._name)
        previous = self._storage_uri(isvc)
        if self._rollout.strategy == "canary" and previous and previous != uri:
            self._canary(uri, previous)
        else:
            self._patch({"canaryTrafficPercent": None, "model": {"storageUri": uri}})
            self._wait_ready()
            log.info("InferenceService now serves %s", uri)

    def discard(self, staged: Staged) -> None:
        shutil.rmtree(staged.handle, ignore_errors=True)

    def resume(self, staged: Staged, previous: str | None) -> bool:
        """Finished only if the InferenceService already serves ``staged`` with all its
        traffic; a rollout cut short (a canary left at N %, a replace never patched) is
        undone: the previous release serves everything again, unjudged traffic never lands
        on an unproven model."""
        uri = f"{self._prefix}/{staged.version}"
        predictor = self._api.get_isvc(self._namespace, self._name).get("spec", {}).get(
            "predictor", {})
        if (predictor.get("model", {}).get("storageUri") == uri
                and predictor.get("canaryTrafficPercent") in (None, 100)):
            self._wait_ready()
            return True
        if previous is not None:
            old = f"{self._prefix}/{Path(previous).name}"
            self._patch({"canaryTrafficPercent": None, "model": {"storageUri": old}})
            log.warning("InferenceService back on %s (a rollout of %s was cut short)", old, uri)
        self.discard(staged)
        shutil.rmtree(Path(staged.location).parent, ignore_errors=True)
        return False

    # -----------------------------------------------------------------------------------------
    def deployment_mode(self, isvc: dict[str, Any]) -> str:
        """The ISVC's annotation, else the cluster default from KServe's configuration."""
        annotations = isvc.get("metadata", {}).get("annotations") or {}
        if MODE_ANNOTATION in annotations:
            return str(annotations[MODE_ANNOTATION])
        config = self._api.config_map_data("kserve", "inferenceservice-config")
        try:
            deploy = json.loads(config.get("deploy", "{}"))
        except ValueError:
            raise KServeError("KServe's inferenceservice-config has an unreadable 'deploy' entry") from None
        return str(deploy.get("defaultDeploymentMode", "Serverless"))

    @staticmethod
    def _storage_uri(isvc: dict[str, Any]) -> str | None:
        return isvc.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")

    def _patch(self, predictor: dict[str, Any]) -> None:
        self._api.patch_isvc(self._namespace, self._name, {"spec": {"predictor": predictor}})

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self._rollout.ready_timeout
        while True:
            isvc = self._api.get_isvc(self._namespace, self._name)
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
