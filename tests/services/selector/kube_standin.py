"""A stand-in Kubernetes API server on 127.0.0.1: the only fake in the test suite, because no
API server can run on our machines.

It serves one InferenceService (the one in manifests/base), KServe's cluster configuration and
the predictor's pods (``add_pod``: listed by label selector, as the API server lists them), and
checks every request it is sent: the path and verb, the bearer token, that the selector's Role
in manifests/base/rbac.yaml allows it, that a pod list names a label selector, the merge-patch
content type, that a patch touches only what promotion may touch, and that the patched object
still validates against KServe's CRD schema. Anything else is answered as the API server would
(404, 401, 415, 422) and recorded in ``violations``, which the tests assert is empty. After each
accepted patch it plays the KServe controller: a new revision when the model changed, not ready
on the first look, ready on the next, with traffic split per ``canaryTrafficPercent``.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.http import BackgroundServer, bind
from tests.manifests.schemas import problems

ROOT = Path(__file__).resolve().parents[3]
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/retrain/inferenceservices/fashion-mnist"
CONFIG_PATH = "/api/v1/namespaces/kserve/configmaps/inferenceservice-config"
PODS_PATH = "/api/v1/namespaces/retrain/pods"
PREDICTOR_LABELS = {"serving.kserve.io/inferenceservice": "fashion-mnist", "component": "predictor"}
TOKEN = "stand-in-token"
PATCHABLE = {"canaryTrafficPercent", "model"}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _role_rules(name: str) -> list[dict[str, Any]]:
    for doc in yaml.safe_load_all((ROOT / "manifests/base/rbac.yaml").read_text()):
        if doc["kind"] == "Role" and doc["metadata"]["name"] == name:
            return doc["rules"]  # type: ignore[no-any-return]
    raise KeyError(name)


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str,
             name: str | None = None) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (name is None or "resourceNames" not in r or name in r["resourceNames"])
               for r in rules)


def _selected(labels: dict[str, str], selector: str) -> bool:
    """An equality-based label selector (``a=b,c=d``), the only kind the selector sends."""
    wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
    return wanted.items() <= labels.items()


class KubeStandIn:
    def __init__(self, mode_annotation: str | None = None, default_mode: str = "Serverless",
                 first_ready: bool = True) -> None:
        isvc = yaml.safe_load((ROOT / "manifests/base/inferenceservice.yaml").read_text())
        annotations = isvc["metadata"].setdefault("annotations", {})
        if mode_annotation == "":  # an InferenceService left to the cluster's default mode
            annotations.pop("serving.kserve.io/deploymentMode", None)
        elif mode_annotation:
            annotations["serving.kserve.io/deploymentMode"] = mode_annotation
        isvc["metadata"]["generation"] = 1
        self.isvc = isvc
        self._revision = 1
        self._rolled_out = self._name(1)
        self._pending_ready = False
        self._first_ready = first_ready  # False: the first revision never became ready
        self._set_status()
        self.config = {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
                       "data": {"deploy": json.dumps({"defaultDeploymentMode": default_mode})}}
        self.requests: list[tuple[str, str, Any]] = []
        self.pods: list[dict[str, Any]] = []  # Pod objects as the API server lists them
        self.pod_selectors: list[str] = []  # the label selector of each pod list
        self.violations: list[str] = []
        self._rules = _role_rules("retrain-selector")
        self._lock = threading.Lock()
        self.server = BackgroundServer(self._app(), bind("127.0.0.1", 0, "kube stand-in"), "kube-api")

    @staticmethod
    def _name(n: int) -> str:
        return f"fashion-mnist-predictor-{n:05d}"

    @property
    def patches(self) -> list[dict[str, Any]]:
        return [body["spec"]["predictor"] for verb, _, body in self.requests if verb == "PATCH"]

    def add_pod(self, name: str, port: int, revision: int = 1, ready: bool = True,
                labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A predictor pod of ``revision`` on 127.0.0.1, its model server on ``port``; Knative's
        queue-proxy is listed first, with ports of its own that are not the server's."""
        uid = f"uid-{name}-{len(self.pods)}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "retrain", "uid": uid,
                            "labels": {**PREDICTOR_LABELS,
                                       "serving.knative.dev/revision": self._name(revision),
                                       **(labels or {})}},
               "spec": {"containers": [
                   {"name": "queue-proxy", "image": "queue", "ports": [
                       {"name": "http-queueadm", "containerPort": 8022},
                       {"name": "queue-port", "containerPort": 8012}]},
                   {"name": "kserve-container", "image": "retrain",
                    "ports": [{"containerPort": port, "protocol": "TCP"}]}]},
               "status": {"phase": "Running", "podIP": "127.0.0.1",
                          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                          "containerStatuses": [
                              {"name": n, "image": n, "imageID": "", "ready": ready,
                               "restartCount": 0} for n in ("queue-proxy", "kserve-container")]}}
        with self._lock:
            self.pods.append(pod)
        return pod

    def restart_container(self, pod: dict[str, Any]) -> None:
        """What the kubelet reports after the server's container restarted in its pod."""
        with self._lock:
            for status in pod["status"]["containerStatuses"]:
                if status["name"] == "kserve-container":
                    status["restartCount"] += 1

    def remove_pod(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pods.remove(pod)

    def start(self) -> KubeStandIn:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _refuse(self, status: int, message: str) -> JSONResponse:
        self.violations.append(message)
        return JSONResponse({"kind": "Status", "status": "Failure", "message": message,
                             "code": status}, status_code=status)

    def _set_status(self) -> None:
        predictor = self.isvc["spec"]["predictor"]
        latest = self._name(self._revision)
        percent = predictor.get("canaryTrafficPercent")
        if not self._pending_ready and percent is None:
            self._rolled_out = latest  # no canary: the ready revision takes all traffic
        if percent is None or latest == self._rolled_out:
            traffic = [{"revisionName": self._rolled_out, "percent": 100, "latestRevision": True}]
        else:
            traffic = [{"revisionName": self._rolled_out, "percent": 100 - percent, "tag": "prev"},
                       {"revisionName": latest, "percent": percent, "tag": "latest",
                        "latestRevision": True}]
        generation = self.isvc["metadata"]["generation"]
        if self._revision == 1 and not self._first_ready:  # (an empty model folder)
            self.isvc["status"] = {
                "observedGeneration": generation,
                "conditions": [{"type": "Ready", "status": "False"}],
                "components": {"predictor": {"latestCreatedRevision": latest}}}
            return
        self.isvc["status"] = {
            "observedGeneration": generation - 1 if self._pending_ready else generation,
            "conditions": [{"type": "Ready", "status": "False" if self._pending_ready else "True"}],
            "components": {"predictor": {
                "latestCreatedRevision": latest,
                "latestReadyRevision": self._name(self._revision - 1) if self._pending_ready else latest,
                "latestRolledoutRevision": self._rolled_out, "traffic": traffic}},
        }

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "PATCH", "PUT", "POST", "DELETE"])
        async def handle(path: str, request: Request) -> JSONResponse:
            path = "/" + path
            raw = await request.body()
            body = json.loads(raw) if raw else None
            with self._lock:
                self.requests.append((request.method, path, body))
                if request.headers.get("authorization") != f"Bearer {TOKEN}":
                    return self._refuse(401, f"{request.method} {path} without the bearer token")
                if path == CONFIG_PATH and request.method == "GET":
                    return JSONResponse(self.config)
                if path == PODS_PATH:
                    return self._list_pods(request)
                if path != ISVC_PATH:
                    return self._refuse(404, f"unexpected path {request.method} {path}")
                verb = {"GET": "get", "PATCH": "patch"}.get(request.method, request.method.lower())
                if not _allowed(self._rules, "serving.kserve.io", "inferenceservices", verb,
                                "fashion-mnist"):
                    return self._refuse(403, f"the selector's Role does not allow {verb} on the "
                                             "InferenceService")
                if request.method == "GET":
                    answer = copy.deepcopy(self.isvc)
                    if self._pending_ready:  # the controller catches up after one look
                        self._pending_ready = False
                        self._set_status()
                    return JSONResponse(answer)
                if request.method != "PATCH":
                    return self._refuse(405, f"promotion must not {request.method} the InferenceService")
                if request.headers.get("content-type") != "application/merge-patch+json":
                    return self._refuse(415, f"PATCH with content type {request.headers.get('content-type')}")
                return self._patch(body)

        return app

    def _list_pods(self, request: Request) -> JSONResponse:
        selector = request.query_params.get("labelSelector", "")
        self.pod_selectors.append(selector)
        if request.method != "GET" or "watch" in request.query_params:
            return self._refuse(405, f"the selector lists pods, it does not {request.method} "
                                     f"or watch them ({request.url})")
        if not _allowed(self._rules, "", "pods", "list"):
            return self._refuse(403, "the selector's Role does not allow list on pods")
        if not selector:
            return self._refuse(400, "a pod list without a label selector reads every pod "
                                     "of the namespace")
        items = [copy.deepcopy(p) for p in self.pods if _selected(p["metadata"]["labels"], selector)]
        return JSONResponse({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                             "items": items})

    def _patch(self, body: Any) -> JSONResponse:
        if (not isinstance(body, dict) or set(body) != {"spec"} or set(body["spec"]) != {"predictor"}
                or not set(body["spec"]["predictor"]) <= PATCHABLE
                or not set(body["spec"]["predictor"].get("model") or {}) <= {"storageUri"}):
            return self._refuse(422, f"patch touches more than the model and its traffic: {body}")
        percent = body["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is not None and not (isinstance(percent, int) and 0 <= percent <= 100):
            return self._refuse(422, f"canaryTrafficPercent {percent!r}")
        before = self.isvc["spec"]["predictor"]["model"].get("storageUri")
        patched = _merge(self.isvc, body)
        found = problems({k: v for k, v in patched.items() if k != "status"})
        if found:
            return self._refuse(422, f"patched InferenceService is invalid: {found}")
        self.isvc = patched
        self.isvc["metadata"]["generation"] += 1
        if self.isvc["spec"]["predictor"]["model"].get("storageUri") != before:
            self._revision += 1  # a changed model is a new revision, not ready at first
            self._pending_ready = True
        self._set_status()
        return JSONResponse(self.isvc)
