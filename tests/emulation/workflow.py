"""The Argo Workflows controller, emulated: a Workflow (as the Sensor submits it) run from its
WorkflowTemplate as Argo runs it, read from the rendered documents, not from a list of tasks:
the entry template's DAG walked in dependency order (``depends`` expressions and
``dependencies``), each task's ``when`` judged after substitution, ``withParam`` and
``withItems`` fanned out, parameters passed by Argo's ``{{...}}`` placeholders, each
container template started by the kubelet emulation (``kubelet.py``) with its output
parameters read from the paths they declare, each resource template's object created through
the API server emulation as the workflow's service account (a TFJob then run by the Training
Operator emulation), and the ``onExit`` handler run last with ``{{workflow.status}}``.

A test may ``omit`` tasks another run has shown already. Not emulated: retries (each step runs once), parallel tasks (ready tasks run one after another),
the ``synchronization`` mutex (one workflow runs at a time here), artifacts."""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml

from tests.emulation.apiserver import ApiServer
from tests.emulation.kubelet import Container, Kubelet
from tests.emulation.operator import TrainingOperator
from tests.emulation.overlay import NAMESPACE, Overlay, OverlayError

PLACEHOLDER = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned")


class WorkflowError(Exception):
    """What Argo would refuse or fail the workflow for (an unresolved placeholder, say)."""


def substitute(value: Any, scope: dict[str, str]) -> Any:
    """``value`` with every ``{{name}}`` replaced from ``scope`` (Argo fails the node on a
    name it cannot resolve)."""
    if isinstance(value, dict):
        return {k: substitute(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, scope) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m[1] not in scope:
            raise WorkflowError(f"failed to resolve {{{{{m[1]}}}}}")
        return scope[m[1]]
    return PLACEHOLDER.sub(one, value)


def depends_met(expression: str, state: dict[str, str]) -> bool:
    """Argo's ``depends``: ``task`` alone means Succeeded, Skipped or Daemoned;
    ``task.Result``; ``&&``, ``||``, ``!`` and parentheses."""
    def one(m: re.Match[str]) -> str:
        name, result = m[1], m[2]
        if result is None:
            return str(state[name] in ("Succeeded", "Skipped", "Daemoned"))
        if result == "AnySucceeded":
            return str(state[name] == "Succeeded")
        return str(state[name] == result)
    python = re.sub(r"([A-Za-z0-9_-]+)(?:\.([A-Za-z]+))?", one, expression)
    python = python.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    return bool(eval(python, {"__builtins__": {}}, {}))  # only True, False, and, or, not


def depends_on(task: dict[str, Any]) -> set[str]:
    if "depends" in task:
        return {m[1] for m in re.finditer(r"([A-Za-z0-9_-]+)(?:\.[A-Za-z]+)?", task["depends"])}
    return set(task.get("dependencies", []))


def when_holds(expression: str) -> bool:
    """Argo's ``when`` after substitution, for the govaluate expressions workflows use:
    comparisons with ``==`` and ``!=`` joined by ``&&`` and ``||``, ``true``/``false``."""
    def term(text: str) -> bool:
        text = text.strip()
        for op in ("==", "!="):
            if op in text:
                left, right = (s.strip().strip("'\"") for s in text.split(op, 1))
                return (left == right) == (op == "==")
        if text in ("true", "false"):
            return text == "true"
        raise WorkflowError(f"cannot evaluate when: {expression!r}")
    return any(all(term(t) for t in alt.split("&&")) for alt in expression.split("||"))


@dataclass
class Node:
    """One step the workflow ran (a pod, or a resource created)."""

    path: str  # the task's path, as Argo names the node: retrain.source.train(0:...).check
    template: str
    phase: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    container: Container | None = None
    stderr: str = ""
    seconds: float = 0.0  # the pod's run, start to exit


@dataclass
class Workflow:
    """A submitted Workflow, run to its end by ``run``."""

    workflow: dict[str, Any]
    overlay: Overlay
    kubelet: Kubelet
    api: ApiServer
    operator: TrainingOperator
    nodes: list[Node] = field(default_factory=list)
    # tasks not run (the part of a DAG another run already showed): Omitted, as a task
    # whose dependencies failed would be; with any, the onExit handler is not run either
    omit: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        ref = self.workflow["spec"]["workflowTemplateRef"]["name"]
        self.spec = self.overlay.get("WorkflowTemplate", ref)["spec"]
        self.name = self.workflow["metadata"]["name"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        given = {p["name"]: p.get("value", "")
                 for p in self.workflow["spec"].get("arguments", {}).get("parameters", [])}
        # the template's parameters with their defaults, overridden by the Workflow's (one
        # the template does not declare is a global parameter all the same)
        self.arguments = {**{p["name"]: str(p.get("value", ""))
                             for p in self.spec["arguments"]["parameters"]},
                          **{k: str(v) for k, v in given.items()}}
        self.missing = [p["name"] for p in self.spec["arguments"]["parameters"]
                        if "value" not in p and p["name"] not in given]
        if self.missing:
            raise WorkflowError(f"arguments without a value: {self.missing}")
        self.globals = {**{f"workflow.parameters.{k}": v for k, v in self.arguments.items()},
                        "workflow.name": self.name, "workflow.namespace": NAMESPACE,
                        "workflow.uid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.name)),
                        "workflow.serviceAccountName": self.spec.get("serviceAccountName",
                                                                     "default")}

    def run(self) -> str:
        """The entry template, then the ``onExit`` handler; the workflow's phase."""
        phase, _ = self.execute(self.spec["entrypoint"], {}, self.name)
        if self.spec.get("onExit") and not self.omit:
            failures = [{"displayName": n.path, "templateName": n.template, "phase": n.phase,
                         "message": n.stderr[-200:]} for n in self.nodes
                        if n.phase in ("Failed", "Error")]
            self.globals.update({"workflow.status": phase,
                                 "workflow.failures": json.dumps(failures)})
            self.execute(self.spec["onExit"], {}, f"{self.name}.onExit")
        return phase

    def step(self, template: str) -> list[Node]:
        return [n for n in self.nodes if n.template == template]

    def execute(self, name: str, given: dict[str, str], path: str) -> tuple[str, dict[str, str]]:
        template = self.templates[name]
        inputs = {}
        for p in template.get("inputs", {}).get("parameters", []):
            if p["name"] not in given and "value" not in p:
                raise WorkflowError(f"{path}: input {p['name']} of {name} was not given")
            inputs[p["name"]] = given.get(p["name"], p.get("value"))
        scope = {**self.globals, **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        if "dag" in template:
            return self._dag(template, scope, path), {}
        if "container" in template:
            return self._container(template, scope, inputs, path)
        if "resource" in template:
            return self._resource(template, scope, inputs, path)
        raise WorkflowError(f"{name}: template kind not emulated ({sorted(template)})")

    def _dag(self, template: dict[str, Any], scope: dict[str, str], path: str) -> str:
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        state: dict[str, str] = {}
        pending = list(tasks)
        while pending:
            ready = [n for n in pending if depends_on(tasks[n]) <= set(state)]
            if not ready:
                raise WorkflowError(f"{path}: tasks {pending} wait on each other")
            for name in ready:
                pending.remove(name)
                state[name] = self._task(tasks[name], scope, state, f"{path}.{name}")
        return "Failed" if any(s in ("Failed", "Errored") for s in state.values()) else "Succeeded"

    def _task(self, task: dict[str, Any], scope: dict[str, str], state: dict[str, str],
              path: str) -> str:
        if task["name"] in self.omit:
            return "Omitted"
        if "depends" in task and not depends_met(task["depends"], state):
            return "Omitted"
        if "dependencies" in task and any(state[d] not in ("Succeeded", "Skipped")
                                          for d in task["dependencies"]):
            return "Omitted"
        if "withParam" in task:
            items = json.loads(substitute(task["withParam"], scope))
        else:
            items = task.get("withItems", [None])
        phases = []
        for i, item in enumerate(items):
            inner = dict(scope)
            if item is not None:
                inner["item"] = item if isinstance(item, str) else json.dumps(item)
                if isinstance(item, dict):
                    inner.update({f"item.{k}": v if isinstance(v, str) else json.dumps(v)
                                  for k, v in item.items()})
            if "when" in task and not when_holds(substitute(task["when"], inner)):
                phases.append("Skipped")
                continue
            given = {p["name"]: substitute(str(p.get("value", "")), inner)
                     for p in task.get("arguments", {}).get("parameters", [])}
            where = f"{path}({i}:{item})" if item is not None else path
            phase, outputs = self.execute(task["template"], given, where)
            phases.append(phase)
            name = task["name"]
            scope.update({f"tasks.{name}.outputs.parameters.{k}": v for k, v in outputs.items()})
            scope[f"tasks.{name}.status"] = phase
        if not phases or all(p == "Skipped" for p in phases):
            return "Skipped"
        return "Failed" if any(p in ("Failed", "Errored") for p in phases) else "Succeeded"

    def _pod(self, template: dict[str, Any]) -> dict[str, Any]:
        metadata = self.spec.get("podMetadata", {})
        return {"metadata": metadata, "spec": {
            "volumes": self.spec.get("volumes", []),
            "serviceAccountName": template.get("serviceAccountName",
                                               self.spec.get("serviceAccountName", "default")),
            "securityContext": template.get("securityContext",
                                            self.spec.get("securityContext", {}))}}

    def _container(self, template: dict[str, Any], scope: dict[str, str],
                   inputs: dict[str, str], path: str) -> tuple[str, dict[str, str]]:
        container = substitute(template["container"], scope)
        try:
            pod = self.kubelet.container(f"{self.name}-{template['name']}",
                                         self._pod(template), container)
        except OverlayError as exc:  # the pod never starts: CreateContainerConfigError
            self.nodes.append(Node(path, template["name"], "Errored", inputs, {}, stderr=str(exc)))
            return "Errored", {}
        began = time.monotonic()
        done = pod.run()
        seconds = time.monotonic() - began
        self.operator.reconcile_all()  # what the step created, the controllers act on
        outputs, phase = {}, "Succeeded" if done.returncode == 0 else "Failed"
        for parameter in template.get("outputs", {}).get("parameters", []):
            source = parameter["valueFrom"]
            file = pod.local(source["path"])
            if file.is_file():
                outputs[parameter["name"]] = pod.pod_path(file.read_text())
            elif "default" in source:
                outputs[parameter["name"]] = str(source["default"])
            elif phase == "Succeeded":
                phase = "Errored"  # Argo: the output file is missing
        self.nodes.append(Node(path, template["name"], phase, inputs, outputs, pod, done.stderr,
                               seconds))
        return phase, outputs

    def _resource(self, template: dict[str, Any], scope: dict[str, str],
                  inputs: dict[str, str], path: str) -> tuple[str, dict[str, str]]:
        resource = template["resource"]
        if resource["action"] != "create":
            raise WorkflowError(f"{path}: resource action {resource['action']} not emulated")
        obj = yaml.safe_load(substitute(resource["manifest"], scope))
        metadata = obj["metadata"]
        if "generateName" in metadata and "name" not in metadata:
            metadata["name"] = metadata.pop("generateName") + "".join(
                random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        group, version = obj["apiVersion"].split("/")
        plural = obj["kind"].lower() + "s"
        account = self._pod(template)["spec"]["serviceAccountName"]
        token = self.kubelet.node.tokens.setdefault(account, f"token-{account}")
        answer = httpx.post(f"{self.api.url}/apis/{group}/{version}/namespaces/{NAMESPACE}/"
                            f"{plural}", json=obj, headers={"Authorization": f"Bearer {token}"})
        if answer.status_code != 201:
            self.nodes.append(Node(path, template["name"], "Failed", inputs, {},
                                   stderr=answer.text))
            return "Failed", {}
        outputs = {p["name"]: _json_path(obj, p["valueFrom"]["jsonPath"])
                   for p in template.get("outputs", {}).get("parameters", [])}
        self.operator.reconcile_all()
        self.nodes.append(Node(path, template["name"], "Succeeded", inputs, outputs))
        return "Succeeded", outputs


def _json_path(obj: dict[str, Any], expression: str) -> str:
    """kubectl's JSONPath for a plain field: ``{.metadata.name}``."""
    value: Any = obj
    for key in expression.strip("{}").strip(".").split("."):
        value = value[key]
    return value if isinstance(value, str) else json.dumps(value)
