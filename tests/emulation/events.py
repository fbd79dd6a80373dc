"""Argo Events, emulated: the overlay's webhook EventSources served on 127.0.0.1 (their
endpoint, method, ``authSecret`` bearer token and ``maxPayloadSize`` checked as the
EventSource checks them), and its Sensors applied to what arrives: each dependency's data
filters (JSON paths with ``string`` regular expressions), then each ``argoWorkflow`` trigger's
parameters (``dataKey``, ``dataTemplate`` with the few Sprig functions ours use, the
``value`` default) written into its Workflow, which is kept in ``submitted``.

A process here writes its folders' paths as this machine has them: what arrives is read with
the data volume's folders written back as the pods mount them (``Node.pod_path``)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.http import BackgroundServer, bind
from tests.emulation.kubelet import Node
from tests.emulation.overlay import Overlay


def json_path(data: Any, path: str) -> Any:
    """A gjson path of plain keys and list indices (``body.data.uri``); None when absent."""
    for key in path.split("."):
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def go_template(template: str, event: dict[str, Any]) -> str:
    """A Sensor's ``dataTemplate``: ``{{ PIPELINE }}`` where the pipeline starts with
    ``.Input.PATH`` or ``printf "FORMAT" .Input.PATH ...`` and goes through ``sha256sum``,
    ``trunc N``, ``lower``, ``upper``."""
    def one(m: re.Match[str]) -> str:
        first, *functions = (s.strip() for s in m[1].split("|"))
        if first.startswith("printf"):
            form, *paths = re.findall(r'"[^"]*"|\S+', first[len("printf"):])
            value = form.strip('"') % tuple(_text(json_path(event, p.removeprefix(".Input.")))
                                            for p in paths)
        else:
            value = _text(json_path(event, first.removeprefix(".Input.")))
        for function in functions:
            name, *args = function.split()
            if name == "sha256sum":
                value = hashlib.sha256(value.encode()).hexdigest()
            elif name == "trunc":
                value = value[:int(args[0])]
            elif name in ("lower", "upper"):
                value = getattr(value, name)()
            else:
                raise ValueError(f"dataTemplate function {name} not emulated")
        return value
    return re.sub(r"\{\{(.+?)\}\}", one, template)


def set_at(doc: dict[str, Any], dest: str, value: str) -> None:
    keys = dest.split(".")
    for key in keys[:-1]:
        doc = doc[int(key)] if isinstance(doc, list) else doc.setdefault(key, {})
    last = keys[-1]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


def filters_pass(dependency: dict[str, Any], event: dict[str, Any]) -> bool:
    data = dependency.get("filters", {}).get("data", [])
    results = []
    for f in data:
        value = json_path(event, f["path"])
        if f["type"] != "string":
            raise ValueError(f"data filter type {f['type']} not emulated")
        results.append(isinstance(value, str)
                       and any(re.search(pattern, value) for pattern in f["value"]))
    operator = dependency.get("filters", {}).get("dataLogicalOperator", "and")
    return all(results) if operator == "and" else any(results)


class ArgoEvents:
    """The webhook EventSources of ``overlay``, and the Sensors that listen to them."""

    def __init__(self, overlay: Overlay, node: Node) -> None:
        self.overlay, self.node = overlay, node
        self.submitted: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.servers = []
        for source in overlay.all("EventSource"):
            if "webhook" not in source["spec"]:
                continue
            app = FastAPI()
            for event_name, hook in source["spec"]["webhook"].items():
                app.add_api_route(hook["endpoint"], self._receiver(source, event_name, hook),
                                  methods=[hook["method"]])
            server = BackgroundServer(app, bind("127.0.0.1", 0, "eventsource"), "eventsource")
            self.servers.append(server.start())
            for port in source["spec"].get("service", {}).get("ports", []):
                node.expose(f"{source['metadata']['name']}-eventsource-svc", port["port"],
                            int(server.url.rsplit(":", 1)[1]))

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def _receiver(self, source: dict[str, Any], event_name: str, hook: dict[str, Any]):
        async def receive(request: Request) -> JSONResponse:
            body = await request.body()
            if "authSecret" in hook:
                token = self.overlay.value("Secret", hook["authSecret"]["name"],
                                           hook["authSecret"]["key"])
                if request.headers.get("authorization") != f"Bearer {token}":
                    self.refused.append(f"{event_name}: bad or missing bearer token")
                    return JSONResponse({"error": "unauthorized"}, status_code=401)
            if len(body) > int(hook.get("maxPayloadSize", 1 << 20)):
                self.refused.append(f"{event_name}: payload of {len(body)} bytes")
                return JSONResponse({"error": "payload too large"}, status_code=400)
            event = {"header": dict(request.headers),
                     "body": json.loads(self.node.pod_path(body.decode()))}
            with self._lock:
                self.received.append(event)
                self._sense(source["metadata"]["name"], event_name, event)
            return JSONResponse({"success": True})
        return receive

    def _sense(self, source: str, event_name: str, event: dict[str, Any]) -> None:
        for sensor in self.overlay.all("Sensor"):
            deps = {d["name"]: d for d in sensor["spec"]["dependencies"]
                    if d["eventSourceName"] == source and d["eventName"] == event_name}
            passed = {n for n, d in deps.items() if filters_pass(d, event)}
            for trigger in sensor["spec"]["triggers"]:
                template = trigger["template"]
                if template.get("conditions") not in passed or "argoWorkflow" not in template:
                    continue
                workflow = copy.deepcopy(template["argoWorkflow"]["source"]["resource"])
                for parameter in template["argoWorkflow"].get("parameters", []):
                    set_at(workflow, parameter["dest"], self._value(parameter["src"], event))
                self.submitted.append(workflow)

    @staticmethod
    def _value(src: dict[str, Any], event: dict[str, Any]) -> str:
        if "dataTemplate" in src:
            return go_template(src["dataTemplate"], event)
        if "dataKey" in src:
            found = json_path(event, src["dataKey"])
            if found is not None:
                return _text(found)
        return str(src.get("value", ""))
