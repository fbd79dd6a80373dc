"""A stand-in Kubernetes API server on 127.0.0.1: the only fake in the test suite, because no
API server can run on our machines.

It serves one InferenceService (the one in manifests/base) and KServe's cluster configuration,
and checks every request it is sent: the path and verb, the bearer token, the merge-patch
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


class KubeStandIn:
    def __init__(self, mode_annotation: str | None = None, default_mode: str = "Serverless") -> None:
        isvc = yaml.safe_load((ROOT / "manifests/base/inferenceservice.yaml").read_text())
        if mode_annotation:
            isvc["metadata"].setdefault("annotations", {})["serving.kserve.io/deploymentMode"] = mode_annotation
        isvc["metadata"]["generation"] = 1
        self.isvc = isvc
        self._revision = 1
        self._rolled_out = self._name(1)
        self._pending_ready = False
        self._set_status()
        self.config = {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
                       "data": {"deploy": json.dumps({"defaultDeploymentMode": default_mode})}}
        self.requests: list[tuple[str, str, Any]] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self.server = BackgroundServer(self._app(), bind("127.0.0.1", 0, "kube stand-in"), "kube-api")

    @staticmethod
    def _name(n: int) -> str:
        return f"fashion-mnist-predictor-{n:05d}"

    @property
    def patches(self) -> list[dict[str, Any]]:
        return [body["spec"]["predictor"] for verb, _, body in self.requests if verb == "PATCH"]

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
                if path != ISVC_PATH:
                    return self._refuse(404, f"unexpected path {request.method} {path}")
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
