"""The KServe promotion backend: the champion goes to an ``InferenceService`` through the
Kubernetes API, replaced at once or rolled out as a canary.

Each release is copied to its own folder of the model volume, ``<repo>/releases/<name>/<v>/<v>/``
(the TF Serving layout KServe's storage initializer expects under a ``storageUri``), and the
InferenceService's ``spec.predictor.model.storageUri`` is pointed at it with a JSON merge
patch. A canary sets ``canaryTrafficPercent`` step by step and judges each step by the live
guard's rules (``guard_rules.judge``): the canary version's figures over the step against the
previous version's over the same time, both summed over all the predictor's pods (a
``live.MetricsSource``, ``pods.PodsSource`` on a cluster: each pod labels its figures with the
version it serves, so one summed read separates the two revisions). The fast rule (errors in a
row) is read at every poll while the step waits. A broken rule rolls the canary back
(``canaryTrafficPercent: 0`` then the old ``storageUri``). KServe honours
``canaryTrafficPercent`` only in the Serverless (Knative) deployment mode; in RawDeployment it
is silently ignored, so a canary is refused there before anything changes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import kube
from events.payloads import GateRule
from repository.layout import next_version
from services.selector.backends import Staged
from services.selector.errors import LiveMetricsError, SelectorError
from services.selector.guard_rules import GuardThresholds, judge, streak_rule
from services.selector.live import MetricsSource, Snapshot, VersionStats

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
    """The canary broke a rule (or could not be judged); the previous model serves all traffic
    again. ``step`` holds the figures it was judged on."""

    def __init__(self, message: str, step: CanaryStep) -> None:
        super().__init__(message)
        self.step = step


class KubeClient:
    """The few Kubernetes calls the backend makes, through the ``kubernetes`` client: read and
    merge-patch the InferenceService, read KServe's cluster configuration."""

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        from kubernetes import client

        self.api_client = api_client  # for the pods' metrics (pods.PodsSource)
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
class Rollout:
    strategy: str = "replace"  # or "canary"
    steps: tuple[int, ...] = (10, 50)  # canary traffic percentages before 100
    step_seconds: float = 60.0  # time at each step before it is judged
    thresholds: GuardThresholds = field(default_factory=GuardThresholds)  # the live guard's rules, per step
    ready_timeout: float = 300.0
    poll_seconds: float = 1.0  # between looks at the InferenceService and at the figures

    def __post_init__(self) -> None:
        if self.strategy not in ("replace", "canary"):
            raise ValueError(f"rollout strategy must be replace or canary, not {self.strategy!r}")
        if not self.steps or any(not 0 < s < 100 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"canary steps must rise within 1..99, got {list(self.steps)}")


@dataclass(frozen=True)
class CanaryStep:
    """One canary step's judgement: the canary version's figures over the step and the other
    versions' over the same time (None: they answered nothing), every rule with its figures,
    or the ``problem`` that kept the step from being judged."""

    percent: int
    version: int
    seconds: float
    window: VersionStats = field(default_factory=VersionStats)
    baseline: VersionStats | None = None
    rules: tuple[GateRule, ...] = ()
    problem: str | None = None
    broken: tuple[GateRule, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "broken", tuple(r for r in self.rules if not r.passed))

    @property
    def failed(self) -> bool:
        return self.problem is not None or bool(self.broken)

    @property
    def reason(self) -> str:
        if self.problem is not None:
            return self.problem
        return "; ".join(f"{r.name}: {r.detail}" for r in self.broken) or "healthy"

    def summary(self) -> str:
        w, b = self.window, self.baseline or VersionStats()
        return (f"canary at {self.percent}% for {self.seconds:.1f}s: version {self.version} "
                f"answered {w.requests:.0f} ({w.errors:.0f} errors, p99 {_ms(w.p99_seconds)}), "
                f"the previous {b.requests:.0f} ({b.errors:.0f} errors, p99 "
                f"{_ms(b.p99_seconds)}) — {self.reason}")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:g} ms"


def step_window(start: Snapshot, now: Snapshot,
                version: int) -> tuple[VersionStats, VersionStats | None]:
    """The canary version's figures between two reads, and every other version's summed
    (the revision it would replace; None when it answered nothing meanwhile)."""
    window = now.of(version).minus(start.of(version))
    others = VersionStats()
    for v in {*start.versions, *now.versions} - {version}:
        others = others.plus(now.of(v).minus(start.of(v)))
    return window, (others if others.requests > 0 else None)


class KServeBackend:
    def __init__(self, api: KubeClient, namespace: str, name: str, repo: Path, storage_prefix: str,
                 rollout: Rollout = Rollout(), metrics: MetricsSource | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._namespace, self._name = namespace, name
        self._repo = repo
        self.releases = repo / "releases" / name
        self._prefix = storage_prefix.rstrip("/") + f"/releases/{name}"
        self._rollout = rollout
        self._metrics = metrics
        self._sleep, self._clock = sleep, clock
        if rollout.strategy == "canary" and metrics is None:
            raise ValueError("a canary rollout needs the serving pods' metrics to judge it by")

    # PromotionBackend ------------------------------------------------------------------------
    def next_version(self) -> int:
        """Past every release, and past every version in the model repository's own folder
        (what the InferenceService may serve before its first release): each pod labels its
        figures with the version it serves, so a canary never shares its number with the
        revision it is judged against."""
        return max(next_version(self.releases), next_version(self._repo / self._name))

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

    def publish(self, staged: Staged, at_once: bool = False) -> None:
        """Serve ``staged``: as a canary if the rollout says so, else (and ``at_once``: a
        rollback to a model already proven, which must not wait out a canary's steps) with
        all the traffic at once."""
        Path(staged.handle).rename(Path(staged.location).parent)
        uri = f"{self._prefix}/{staged.version}"
        isvc = self._api.get_isvc(self._namespace, self._name)
        previous = self._storage_uri(isvc)
        # a canary needs a revision that serves beside it: KServe's first revision never
        # becomes ready on an empty model folder, so the first release takes all traffic
        serving = isvc.get("status", {}).get("components", {}).get("predictor", {}).get(
            "latestReadyRevision")
        if (self._rollout.strategy == "canary" and not at_once and serving and previous
                and previous != uri):
            self._canary(uri, previous, staged.version)
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

    def _canary(self, uri: str, previous: str, version: int) -> None:
        for percent in self._rollout.steps:
            self._patch({"canaryTrafficPercent": percent, "model": {"storageUri": uri}})
            self._wait_ready()
            step = self._watch_step(percent, version)
            (log.warning if step.failed else log.info)("%s", step.summary())
            if step.failed:
                self._patch({"canaryTrafficPercent": 0})  # all traffic back to the last good one
                self._patch({"canaryTrafficPercent": None, "model": {"storageUri": previous}})
                raise CanaryRolledBackError(f"canary rolled back at {percent}%: {step.reason}; "
                                            f"{previous} serves all traffic again", step)
        self._patch({"canaryTrafficPercent": None})  # the canary takes all traffic
        self._wait_ready()

    def _watch_step(self, percent: int, version: int) -> CanaryStep:
        """One step: the figures read at once, then at every poll until ``step_seconds`` have
        passed (the fast rule judged at each, ending the step early when broken), then every
        rule on the whole step. A read that fails mid-step is retried at the next poll; one
        that fails at the start or the end leaves the step unjudged: failed."""
        assert self._metrics is not None
        r = self._rollout
        began = self._clock()
        try:
            start = self._metrics.scrape()
        except LiveMetricsError as exc:
            return CanaryStep(percent, version, 0.0, problem=f"cannot read the figures: {exc}")
        while True:
            left = began + r.step_seconds - self._clock()
            self._sleep(max(0.0, min(r.poll_seconds, left)))
            ended = self._clock() - began >= r.step_seconds
            try:
                now = self._metrics.scrape()
            except LiveMetricsError as exc:
                if ended:
                    return CanaryStep(percent, version, self._clock() - began,
                                      problem=f"cannot read the figures: {exc}")
                log.warning("canary at %d%%: %s (trying again)", percent, exc)
                continue
            window, baseline = step_window(start, now, version)
            fast = streak_rule(window, r.thresholds)
            if ended or not fast.passed:
                return CanaryStep(percent, version, now.at - start.at, window, baseline,
                                  judge(window, baseline, r.thresholds))
