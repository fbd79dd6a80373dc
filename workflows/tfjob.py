"""Waiting for a TFJob on the cluster: its own ``Succeeded``/``Failed`` conditions decide.

Argo's resource templates can only compare scalar fields, not find a condition in a list, so
the workflow creates each TFJob and then runs ``retrain step wait-training``, which reads the
job through the Kubernetes API until the Training Operator marks it ``Succeeded`` or
``Failed`` (after its ``backoffLimit`` of restarts, or past its ``activeDeadlineSeconds``).
A job still running at the step's own deadline is deleted, its pods with it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import kube
from core.backoff import Backoff
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


# creating a training's TFJob, and removing one the workflow left behind ------------------------
WORKFLOW_UID_LABEL = "retrain.dev/workflow-uid"
MODEL_LABEL = "retrain.dev/model"
NAME_BYTES = 50  # the Training Operator names Services "<job>-worker-<i>": 63 at most
# restarts a TFJob may spend per worker: one lost worker restarts every worker once
RESTARTS_PER_WORKER = 3


def tfjob_name(workflow_name: str, workflow_uid: str, model: str) -> str:
    """The TFJob of ``model``'s training in the Workflow (``workflow_name``, ``workflow_uid``):
    the same name every time the create is tried, a new one for a new Workflow of the same
    name. A DNS label: the model's underscores become dashes, and the hash keeps it unique
    when a long Workflow name is cut. Pure."""
    digest = hashlib.sha256(f"{workflow_uid}/{model}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]", "-", f"{workflow_name}-{model}".lower())
    return f"{stem[:NAME_BYTES - len(digest) - 1].strip('-')}-{digest}"


def owned_job(manifest: dict[str, Any], workflow_name: str, workflow_uid: str, model: str,
              ) -> dict[str, Any]:
    """The TFJob to create from the template's ``manifest``: the training's name, the
    Workflow as its owner (deleted with it) and in a label (an existing job is adopted only
    when it says so), and a backoff limit of ``RESTARTS_PER_WORKER`` per worker (one lost
    worker restarts all of them). Pure: returns a new dict."""
    metadata = manifest.get("metadata") or {}
    spec = manifest.get("spec") or {}
    workers = sum(int(r.get("replicas") or 1)
                  for r in (spec.get("tfReplicaSpecs") or {}).values())
    return {
        **manifest,
        "metadata": {
            **{k: v for k, v in metadata.items() if k != "generateName"},
            "name": tfjob_name(workflow_name, workflow_uid, model),
            "labels": {**(metadata.get("labels") or {}), WORKFLOW_UID_LABEL: workflow_uid,
                       MODEL_LABEL: model},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                 "name": workflow_name, "uid": workflow_uid}],
        },
        "spec": {**spec, "runPolicy": {**(spec.get("runPolicy") or {}),
                                       "backoffLimit": RESTARTS_PER_WORKER * max(workers, 1)}},
    }


def create_training(api_client: Any, job: dict[str, Any], attempts: int = 5,
                    sleep: Callable[[float], None] = time.sleep) -> str:
    """Create ``job`` (``owned_job``'s) and return its name. A job of that name that is this
    training's (its labels name the same Workflow uid and model) is adopted: a create tried
    again after its answer was lost. An API server away or overloaded is tried again
    ``attempts`` times in all, backing off; anything else (refused, invalid, a job of that
    name that is not ours) raises ``KubeError`` naming it."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    path = tfjob_path(namespace, name)
    backoff = Backoff(5.0, 60.0, sleep=sleep)
    for attempt in range(1, attempts + 1):
        try:
            kube.call("POST", path, api.create_namespaced_custom_object, group=GROUP,
                      version=VERSION, namespace=namespace, plural=PLURAL, body=job)
            log.info("TFJob %s created", name)
            return name
        except kube.KubeError as exc:
            if exc.status == 409:
                return _adopted(api, job, path)
            if not transient(exc) or attempt == attempts:
                raise
            log.warning("TFJob %s: cannot create it now (%s); trying again", name, exc)
            backoff.wait()
    raise AssertionError("unreachable")  # the loop returns or raises


def _adopted(api: Any, job: dict[str, Any], path: str) -> str:
    metadata = job["metadata"]
    found = kube.call("GET", path, api.get_namespaced_custom_object, group=GROUP,
                      version=VERSION, namespace=metadata["namespace"], plural=PLURAL,
                      name=metadata["name"])
    labels = (found.get("metadata") or {}).get("labels") or {}
    wanted = {k: metadata["labels"][k] for k in (WORKFLOW_UID_LABEL, MODEL_LABEL)}
    if {k: labels.get(k) for k in wanted} != wanted:
        raise kube.KubeError(
            f"TFJob {metadata['name']} exists and is not this training's (its labels say "
            f"{ {k: labels.get(k) for k in wanted} }, expected {wanted}); not adopted", 409)
    log.info("TFJob %s exists already (an earlier try created it): adopted", metadata["name"])
    return str(metadata["name"])


def delete_training(api_client: Any, namespace: str, name: str) -> bool:
    """Delete the TFJob ``name`` and its pods; False when there is none."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    try:
        kube.call("DELETE", tfjob_path(namespace, name), api.delete_namespaced_custom_object,
                  group=GROUP, version=VERSION, namespace=namespace, plural=PLURAL, name=name,
                  propagation_policy="Background")
    except kube.KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True
