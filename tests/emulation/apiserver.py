"""The Kubernetes API server, emulated on 127.0.0.1: it holds objects (the TFJobs the workflow
creates, the predictor pods KServe would run), answers get, list (by label selector) and
create, and authorises every request as RBAC would, from the overlay's own Roles and
RoleBindings and the bearer token of the pod's service account (``Node.tokens``). A refusal
is answered as the API server answers it (401, 403, 404, 409) and kept in ``refusals``."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.http import BackgroundServer, bind
from tests.emulation.overlay import NAMESPACE, Overlay

Doc = dict[str, Any]
VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _selected(labels: dict[str, str], selector: str) -> bool:
    wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
    return wanted.items() <= labels.items()


class ApiServer:
    def __init__(self, overlay: Overlay, tokens: dict[str, str],
                 pod_path: Callable[[str], str] = lambda text: text) -> None:
        """``pod_path``: what a process here sends, with this machine's folders written as
        the pods mount them (an object created names paths as a pod sees them)."""
        self.overlay, self.tokens, self.pod_path = overlay, tokens, pod_path
        self.objects: dict[tuple[str, str], Doc] = {}  # (resource path, name) -> object
        self.refusals: list[str] = []
        self.requests: list[tuple[str, str, str]] = []  # (account, verb, path)
        self._lock = threading.Lock()
        app = FastAPI()
        app.add_api_route("/{path:path}", self._handle, methods=["GET", *VERBS])
        self.server = BackgroundServer(app, bind("127.0.0.1", 0, "kube-api emulation"),
                                       "kube-api")

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ApiServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def put(self, resource: str, obj: Doc) -> Doc:
        """What a controller writes (a pod, a status)."""
        with self._lock:
            obj.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
            self.objects[(resource, obj["metadata"]["name"])] = obj
        return obj

    def get(self, resource: str, name: str) -> Doc:
        return self.objects[(resource, name)]

    def allowed(self, account: str, group: str, resource: str, verb: str, name: str) -> bool:
        """Whether a Role or ClusterRole bound to ``account`` allows ``verb``."""
        for binding in [*self.overlay.all("RoleBinding"), *self.overlay.all("ClusterRoleBinding")]:
            if not any(s.get("kind") == "ServiceAccount" and s["name"] == account
                       for s in binding.get("subjects", [])):
                continue
            role = self.overlay.get(binding["roleRef"]["kind"], binding["roleRef"]["name"])
            for rule in role.get("rules", []):
                if (group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
                        and (verb in rule["verbs"] or "*" in rule["verbs"])
                        and (not rule.get("resourceNames") or name in rule["resourceNames"])):
                    return True
        return False

    def _refuse(self, code: int, message: str) -> JSONResponse:
        self.refusals.append(message)
        return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "message": message, "code": code}, status_code=code)

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        parts = path.strip("/").split("/")
        # api/v1/namespaces/NS/RES[/NAME] or apis/GROUP/VERSION/namespaces/NS/RES[/NAME]
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if len(rest) < 3 or rest[0] != "namespaces" or rest[1] != NAMESPACE:
            return self._refuse(404, f"{request.method} /{path}: not served by the emulation")
        resource, name = rest[2], (rest[3] if len(rest) > 3 else "")
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        account = next((a for a, t in self.tokens.items() if t == token), None)
        if account is None:
            return self._refuse(401, f"{request.method} /{path}: Unauthorized")
        verb = VERBS.get(request.method) or ("get" if name else
                                             "watch" if "watch" in request.query_params else "list")
        self.requests.append((account, verb, "/" + path))
        if not self.allowed(account, group, resource, verb, name):
            return self._refuse(403, f'{resource}.{group} "{name}" is forbidden: User '
                                     f'"system:serviceaccount:{NAMESPACE}:{account}" cannot '
                                     f'{verb} resource "{resource}" in API group "{group}" in '
                                     f'the namespace "{NAMESPACE}"')
        key = f"{group}/{resource}"
        with self._lock:
            if verb == "get":
                if (key, name) not in self.objects:
                    return self._refuse(404, f'{resource}.{group} "{name}" not found')
                return JSONResponse(copy.deepcopy(self.objects[(key, name)]))
            if verb == "list":
                selector = request.query_params.get("labelSelector", "")
                items = [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == key
                         and _selected(o["metadata"].get("labels", {}), selector)]
                return JSONResponse({"apiVersion": "v1", "kind": "List", "metadata": {},
                                     "items": items})
        if verb == "create":
            obj = json.loads(self.pod_path((await request.body()).decode()))
            if (key, obj["metadata"]["name"]) in self.objects:
                return self._refuse(409, f'{resource}.{group} "{obj["metadata"]["name"]}" '
                                         "already exists")
            self.put(key, obj)
            return JSONResponse(copy.deepcopy(obj), status_code=201)
        return self._refuse(405, f"{verb} {path}: not emulated")
