"""Strict schema validation of every kind we deploy: core kinds with kubernetes-validate,
the TFJob and InferenceService against their CRDs, Argo Events kinds against the project's
swagger, Argo Workflows kinds through hera's models and Argo's own JSON schema. Unknown fields are errors everywhere
(Kubernetes would drop them silently)."""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.strict import strict_problems

SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.30"
ARGO_EVENTS = "io.argoproj.events.v1alpha1."
ARGO_WORKFLOWS = "io.argoproj.workflow.v1alpha1."
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


def _strict(schema: Any) -> Any:
    """Objects that list properties accept no others, unless they preserve unknown fields."""
    if isinstance(schema, dict):
        if schema.get("format") == "int-or-string":  # swagger says string; Kubernetes takes both
            return {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _read(name: str) -> str:
    path = SCHEMAS / name
    return gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()


@functools.cache
def _crd(name: str) -> dict[str, Any]:
    """A released CRD, parsed once (with libyaml where PyYAML has it: the pure-Python parser
    takes about ten seconds for KServe's)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(_read(name), Loader=loader)  # noqa: S506 (a safe loader)


def _crd_schema(name: str, version: str) -> Any:
    [entry] = [v for v in _crd(name)["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


@functools.cache
def _crd_validator(name: str, version: str) -> jsonschema.Validator:
    return jsonschema.Draft7Validator(_strict(copy.deepcopy(_crd_schema(name, version))))


@functools.cache
def _argo_events_definitions() -> dict[str, Any]:
    return _strict(json.loads(_read("argo-events-v1.9.11-swagger.json.gz"))["definitions"])


@functools.cache
def _argo_workflows_definitions() -> dict[str, Any]:
    definitions = json.loads(_read("argo-workflows-v3.5.11-schema.json.gz"))["definitions"]
    # the schema writes IntOrString as a plain string; Kubernetes takes an integer too
    definitions[INT_OR_STRING] = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    return _strict(definitions)  # type: ignore[no-any-return]


def _argo_workflows_validator(kind: str) -> jsonschema.Validator:
    root = {"definitions": _argo_workflows_definitions(), "$ref": f"#/definitions/{ARGO_WORKFLOWS}{kind}"}
    return jsonschema.Draft7Validator(root)


def _argo_events_validator(kind: str) -> jsonschema.Validator:
    root = {"definitions": _argo_events_definitions(), "$ref": f"#/definitions/{ARGO_EVENTS}{kind}"}
    return jsonschema.Draft7Validator(root)


# No ServingRuntime CRD is among the released schemas we have: its fields are checked against
# KServe's v1alpha1 ServingRuntimeSpec as documented, and its containers against the container
# schema inside KServe's own InferenceService CRD (the same Kubernetes Container type).
SERVING_RUNTIME_SPEC = {"supportedModelFormats", "protocolVersions", "containers", "multiModel",
                        "disabled", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint",
                        "replicas", "storageHelper", "builtInAdapter", "volumes", "nodeSelector",
                        "affinity", "tolerations", "labels", "annotations", "imagePullSecrets",
                        "hostIPC", "workerSpec"}
MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


@functools.cache
def _runtime_container_validator() -> jsonschema.Validator:
    isvc = _crd_schema("kserve-v0.20.0-inferenceservices-crd.yaml.gz", "v1beta1")
    container = isvc["properties"]["spec"]["properties"]["predictor"]["properties"][
        "containers"]["items"]
    return jsonschema.Draft7Validator(_strict(copy.deepcopy(container)))


def _serving_runtime_problems(doc: dict[str, Any]) -> list[str]:
    found = [f"(root): unexpected {k!r}" for k in set(doc) - {"apiVersion", "kind", "metadata", "spec"}]
    spec = doc.get("spec", {})
    found += [f"spec: unexpected {k!r}" for k in sorted(set(spec) - SERVING_RUNTIME_SPEC)]
    for i, fmt in enumerate(spec.get("supportedModelFormats", [])):
        found += [f"spec.supportedModelFormats.{i}: unexpected {k!r}" for k in sorted(set(fmt) - MODEL_FORMAT)]
        if not isinstance(fmt.get("name"), str):
            found.append(f"spec.supportedModelFormats.{i}.name is required")
    found += [f"spec.protocolVersions: unknown {v!r}" for v in spec.get("protocolVersions", [])
              if v not in PROTOCOLS]
    validator = _runtime_container_validator()
    if not spec.get("containers"):
        found.append("spec.containers: at least one is required")
    for i, c in enumerate(spec.get("containers", [])):
        found += [f"spec.containers.{i}.{e}" for e in _errors(validator, c)]
    return found


def _errors(validator: jsonschema.Validator, doc: Any) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                  for e in validator.iter_errors(doc))


def problems(doc: dict[str, Any]) -> list[str]:
    """Every schema problem of one object; [] when it is valid."""
    kind, api = doc.get("kind"), doc.get("apiVersion", "")
    if api == "kubeflow.org/v1" and kind == "TFJob":
        return _errors(_crd_validator("kubeflow-tfjobs-crd-v1.9.0.yaml.gz", "v1"), doc)
    if api == "serving.kserve.io/v1beta1" and kind == "InferenceService":
        return _errors(_crd_validator("kserve-v0.20.0-inferenceservices-crd.yaml.gz", "v1beta1"), doc)
    if api == "serving.kserve.io/v1alpha1" and kind == "ServingRuntime":
        return _serving_runtime_problems(doc)
    if api == "argoproj.io/v1alpha1" and kind in ("EventBus", "EventSource", "Sensor"):
        return _errors(_argo_events_validator(kind), doc)
    if api == "argoproj.io/v1alpha1" and kind in ("WorkflowTemplate", "Workflow"):
        from hera.workflows import models

        model = getattr(models, kind)
        try:
            model.model_validate(doc)
        except Exception as exc:  # pydantic's ValidationError lists every problem
            return [str(exc)]
        # hera's models, generated from Argo's OpenAPI (v3.6: ``synchronization.mutexes``),
        # less ``synchronization.mutex``, which the v3.5 the runbook installs reads (and v3.6
        # still does): Argo's own v3.5 schema checks it
        found = [p for p in strict_problems(model, doc)
                 if not p.endswith("synchronization.mutex: unknown field of Synchronization")]
        return found + _errors(_argo_workflows_validator(kind), doc)  # and Argo's own schema
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema for {api} {kind}: {exc}"]
    return []
