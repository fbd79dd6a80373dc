"""Waiting for a TFJob on the cluster: its own ``Succeeded``/``Failed`` conditions decide.

Argo's resource templates can only compare scalar fields, not find a condition in a list, so
the workflow creates each TFJob and then runs ``retrain step wait-training``, which reads the
job through the Kubernetes API until the Training Operator marks it ``Succeeded`` or
``Failed`` (after its ``backoffLimit`` of restarts, or past its ``activeDeadlineSeconds``).
A job still running at the step's own deadline is deleted, its pods with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import kube
from workflows.errors import WorkflowError

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"


class TrainingJobError(WorkflowError):
    """The TFJob failed, or did not finish in time."""


@dataclass(frozen=True)
class JobState:
    phase: str  # "succeeded", "failed" or "running"
    message: str


def job_state(job: dict[str, Any]) -> JobState:
    """Where a TFJob stands, from its conditions alone. Pure."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for kind in ("Failed", "Succeeded"):  # a job marked both failed last: failed wins
        for condition in conditions:
            if condition.get("type") == kind and condition.get("status") == "True":
                return JobState(kind.lower(), condition.get("message") or condition.get("reason") or kind)
    latest = conditions[-1] if conditions else {}
    return JobState("running", latest.get("message") or latest.get("type") or "created")


def transient(exc: kube.KubeError) -> bool:
    """An API server away or overloaded (unreachable, 429, 5xx): a long wait outlives it."""
    return exc.status is None or exc.status == 429 or exc.status >= 500


def tfjob_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def wait_for_training(api_client: Any, namespace: str, name: str, timeout: float,
                      poll: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> str:
    """Block until the TFJob ``name`` succeeds (returns its message) or fails (raises with
    the Training Operator's message); past ``timeout`` seconds the job is deleted (its pods
    with it) and the wait fails."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    path = tfjob_path(namespace, name)
    deadline = clock() + timeout
    last = ""
    state = JobState("running", "not read yet")
    while True:
        try:
            job = kube.call("GET", path, api.get_namespaced_custom_object, group=GROUP,
                            version=VERSION, namespace=namespace, plural=PLURAL, name=name)
        except kube.KubeError as exc:
            if not transient(exc):  # refused, or the job is gone: waiting will not help
                raise
            log.warning("TFJob %s: cannot read it now (%s); still waiting", name, exc)
            job = None
        if job is not None:
            state = job_state(job)
        if state.message != last:
            log.info("TFJob %s: %s (%s)", name, state.phase, state.message)
            last = state.message
        if state.phase == "succeeded":
            return state.message
        if state.phase == "failed":
            raise TrainingJobError(f"TFJob {name} failed: {state.message}")
        if clock() >= deadline:
            kube.call("DELETE", path, api.delete_namespaced_custom_object, group=GROUP,
                      version=VERSION, namespace=namespace, plural=PLURAL, name=name,
                      propagation_policy="Background")
            raise TrainingJobError(f"TFJob {name} still {state.phase} after {timeout:.0f}s "
                                   f"({state.message}); deleted it and its pods")
        sleep(poll)
