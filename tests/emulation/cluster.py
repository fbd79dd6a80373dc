"""One overlay's cluster on this machine: the rendered documents, the node (folders, ports,
the test's Redis), the API server, the kubelet, the Training Operator, Argo Events and Argo
Workflows, each emulated; the workloads (Deployments, KServe's predictor pods, the Workflow's
steps, the TFJob's replicas) are the overlay's own containers run for real.

KServe is emulated as it lays a predictor out: the ServingRuntime's ``kserve-container`` with
the InferenceService's ``pvc://CLAIM/PATH`` mounted at ``/mnt/models`` (the storage
initializer's mount of a PVC), Knative's ``PORT`` and ``K_*`` variables, and the pod listed by
the API server with KServe's and Knative's labels, Running and Ready once its readiness probe
answers."""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.emulation.apiserver import ApiServer
from tests.emulation.events import ArgoEvents
from tests.emulation.image import Image, read
from tests.emulation.kubelet import Container, Kubelet, Node
from tests.emulation.operator import TrainingOperator
from tests.emulation.overlay import NAMESPACE, ROOT, Overlay
from tests.emulation.workflow import Workflow

RETRAIN = str(Path(sys.executable).with_name("retrain"))  # the image's `retrain`
OURS = "retrain"  # the image name every overlay gives our containers ends so
MODELS = "/mnt/models"  # where KServe's storage initializer puts the model
PODS = "/pods"  # the API server emulation's key for core pods
IMAGE_VENV = "/opt/venv"  # where the Dockerfile installs us


def image_here(dockerfile: Path) -> Image:
    """The image as this machine runs it: its environment over this machine's (its base
    image's ``PATH``), its virtual environment (``/opt/venv``) this checkout's."""
    image = read(dockerfile, {"PATH": os.environ.get("PATH", "")})
    env = {k: v.replace(IMAGE_VENV, sys.prefix) if k == "PATH" else v
           for k, v in image.env.items()}
    return Image(env, image.entrypoint, image.cmd, image.folders)


@dataclass
class Cluster:
    overlay: Overlay
    node: Node
    trainer: list[str]
    trainer_env: dict[str, str]
    running: dict[str, Container] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.api = ApiServer(self.overlay, self.node.tokens, self.node.pod_path).start()
        self.node.kube_url = self.api.url
        self.kubelet = Kubelet(self.overlay, self.node, executables={"retrain": RETRAIN},
                               image=image_here(ROOT / "Dockerfile"))
        self.operator = TrainingOperator(self.api, self.kubelet, self.trainer, self.trainer_env)
        self.events = ArgoEvents(self.overlay, self.node)
        self.workflows: list[Workflow] = []
        self.predictors: list[Container] = []

    @property
    def home(self) -> Path:
        """The data volume (``retrain-data``), which every pod mounts at /var/lib/retrain."""
        return self.node.claim("retrain-data")

    def stop(self) -> dict[str, str]:
        for container in self.running.values():  # all at once, each given its grace
            container.terminate()
        logs = {name: c.stop() for name, c in self.running.items()}
        self.events.stop()
        self.api.stop()
        return logs

    def deployment(self, name: str, overrides: dict[str, str] | None = None) -> Container:
        """Deployment ``name``'s container, started, its Service pointed at it; ``overrides``:
        variables a test sets over the pod's (each one said where it is used)."""
        pod = self.overlay.deployment_pod(name)
        [container] = pod["spec"]["containers"]
        started = self.kubelet.container(name, pod, container, overrides).start()
        self.running[name] = started
        for service in self.overlay.all("Service"):
            if service["spec"].get("selector", {}).items() <= pod["metadata"]["labels"].items():
                for port in service["spec"]["ports"]:
                    target = str(port.get("targetPort", port["port"]))
                    self.node.expose(service["metadata"]["name"], port["port"],
                                     started.port(target))
        return started

    def submit(self, workflow: dict[str, Any], omit: frozenset[str] = frozenset()) -> Workflow:
        run = Workflow(workflow, self.overlay, self.kubelet, self.api, self.operator, omit=omit)
        self.workflows.append(run)
        return run

    def predictor(self, revision: int = 1) -> Container:
        """One predictor pod of the InferenceService, as KServe and Knative run it."""
        isvc = self.overlay.get("InferenceService", "fashion-mnist")
        model = isvc["spec"]["predictor"]["model"]
        runtime = self.overlay.get("ServingRuntime", model["runtime"])
        [container] = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
        claim, _, sub = model["storageUri"].removeprefix("pvc://").partition("/")
        name = f"{isvc['metadata']['name']}-predictor-{revision:05d}"
        port = container.get("ports", [{"containerPort": 8080}])[0]["containerPort"]
        knative = {"K_REVISION": name, "K_SERVICE": name,
                   "K_CONFIGURATION": f"{isvc['metadata']['name']}-predictor"}
        pod = {"metadata": {}, "spec": {
            "serviceAccountName": isvc["spec"]["predictor"].get("serviceAccountName", "default"),
            "volumes": runtime["spec"].get("volumes", [])}}
        made = self.kubelet.container(f"{name}-deployment-{len(self.predictors)}", pod,
                                      container, knative,
                                      mounts={MODELS: self.node.claim(claim) / sub})
        made.env["PORT"] = str(made.port(str(port)))  # Knative's, as this machine has it
        started = made.start()
        self.predictors.append(started)
        self.running[f"predictor-{len(self.predictors)}"] = started
        return started

    def list_pod(self, predictor: Container, revision: int = 1) -> None:
        """What the API server lists for a predictor pod once it is Ready (KServe's labels,
        Knative's queue-proxy first, the server's port as the kubelet reports it)."""
        isvc = "fashion-mnist"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = predictor.name
        self.api.put(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                "serving.kserve.io/inferenceservice": isvc, "component": "predictor",
                "serving.knative.dev/revision": f"{isvc}-predictor-{revision:05d}"}},
            "spec": {"containers": [
                {"name": "queue-proxy", "image": "queue", "ports": [
                    {"name": "http-queueadm", "containerPort": 8022},
                    {"name": "queue-port", "containerPort": 8012}]},
                {"name": "kserve-container", "image": "retrain", "ports": [
                    {"containerPort": predictor.port(str(p["containerPort"])), "protocol": "TCP"}
                    for p in predictor.spec.get("ports", [])]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "startTime": now,
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [
                           {"name": n, "image": n, "imageID": "", "ready": True,
                            "restartCount": 0, "state": {"running": {"startedAt": now}}}
                           for n in ("queue-proxy", "kserve-container")]}})
