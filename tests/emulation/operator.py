"""The Training Operator, emulated: a TFJob's replicas started here, each with the
``TF_CONFIG`` the operator gives it, and the job's conditions set from how they exit.

As the operator (``pkg/controller.v1/tensorflow``) does: a job of one replica in all is not
distributed and gets no ``TF_CONFIG``; otherwise every replica gets
``{"cluster": {TYPE: ["<job>-<type>-<i>.<namespace>.svc:<port>", ...]}, "task": {"type": TYPE,
"index": i}, "environment": "cloud"}``, the port being the container's port named
``tfjob-port``, else 2222. The job succeeds when every worker (or the chief) exits 0, and fails
on a replica's non-zero exit (no restarts: the emulation runs each replica once)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.emulation.apiserver import ApiServer
from tests.emulation.kubelet import Container, Kubelet
from tests.emulation.overlay import NAMESPACE

RESOURCE = "kubeflow.org/tfjobs"
DEFAULT_PORT = 2222


def tf_config(job: dict[str, Any], replica_type: str, index: int) -> str | None:
    """The TF_CONFIG the operator sets on ``replica_type`` ``index`` of ``job`` (None: none)."""
    specs = job["spec"]["tfReplicaSpecs"]
    if sum(int(s.get("replicas", 1)) for s in specs.values()) == 1:
        return None
    cluster = {}
    name = job["metadata"]["name"]
    for kind, spec in specs.items():
        port = next((p["containerPort"] for c in spec["template"]["spec"]["containers"]
                     if c["name"] == "tensorflow" for p in c.get("ports", [])
                     if p.get("name") == "tfjob-port"), DEFAULT_PORT)
        cluster[kind.lower()] = [f"{name}-{kind.lower()}-{i}.{NAMESPACE}.svc:{port}"
                                 for i in range(int(spec.get("replicas", 1)))]
    return json.dumps({"cluster": cluster, "task": {"type": replica_type.lower(), "index": index},
                       "environment": "cloud"})


def _condition(kind: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": f"TFJob{kind}", "message": message,
            "lastTransitionTime": "2026-12-05T00:00:00Z"}


@dataclass
class TrainingOperator:
    api: ApiServer
    kubelet: Kubelet
    trainer: list[str]  # the image's `retrain` for the TFJob's container: the test trainer
    env: dict[str, str] = field(default_factory=dict)  # what the test trainer needs besides
    replicas: list[Container] = field(default_factory=list)  # every replica run

    def reconcile_all(self) -> None:
        """Every TFJob the API server holds that has not run yet, run (the controller's loop,
        between the workflow's steps)."""
        for resource, name in list(self.api.objects):
            if resource == RESOURCE and "status" not in self.api.get(RESOURCE, name):
                self.reconcile(name)

    def reconcile(self, name: str) -> dict[str, Any]:
        """Runs TFJob ``name``'s replicas (all at once, as pods would) and records its end."""
        job = self.api.get(RESOURCE, name)
        started = []
        for kind, spec in job["spec"]["tfReplicaSpecs"].items():
            [container] = [c for c in spec["template"]["spec"]["containers"]
                           if c["name"] == "tensorflow"]
            for i in range(int(spec.get("replicas", 1))):
                config = tf_config(job, kind, i)
                extra = {**self.env, **({"TF_CONFIG": config} if config else {})}
                pod = self.kubelet.container(f"{name}-{kind.lower()}-{i}", spec["template"],
                                             container, extra, command=self.trainer)
                started.append((kind, i, pod.start()))
                self.replicas.append(pod)
        failed = []
        for kind, i, pod in started:
            assert pod.process is not None
            code = pod.process.wait(timeout=300)
            if code:
                failed.append(f"{kind.lower()}-{i} exited with code {code}")
        conditions = [_condition("Created", "TFJob is created."),
                      _condition("Running", "TFJob is running.")]
        conditions[-1]["status"] = "False"
        if failed:
            conditions.append(_condition("Failed", f"TFJob {name} has failed: {'; '.join(failed)}"))
        else:
            conditions.append(_condition("Succeeded", f"TFJob {name} successfully completed."))
        job["status"] = {"conditions": conditions}
        return job
