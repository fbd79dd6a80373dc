"""A small kustomize build in Python for the features our manifests use: ``resources``
and ``bases`` (files and folders with a kustomization), ``namespace``, ``images`` and
strategic-merge ``patches`` / ``patchesStrategicMerge``. The tests build every overlay with
it, and a test checks that the real ``kubectl kustomize`` (installed by ``make test``) agrees."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class KustomizeError(Exception):
    pass


def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _identity(doc: Doc) -> tuple[str, str, str]:
    return doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else "", doc["kind"], doc["metadata"]["name"]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge for what our patches touch: maps merge, lists of named maps merge by
    ``name``, anything else is replaced. Returns a new value."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out)}
        added = []
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + out  # as kustomize (v2 and v5) orders them: the patch's new items first
    return copy.deepcopy(patch)


def _set_images(value: Any, images: list[Doc]) -> Any:
    if isinstance(value, dict):
        return {k: (_image(v, images) if k == "image" and isinstance(v, str) else _set_images(v, images))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_set_images(v, images) for v in value]
    return value


def _set_pod_images(doc: Doc, images: list[Doc]) -> Doc:
    """kustomize's default image paths on a kind it does not know: ``spec.containers[]`` and
    ``spec.initContainers[]`` (a ServingRuntime's, say), nothing deeper."""
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not any(k in spec for k in ("containers", "initContainers")):
        return doc
    out = copy.deepcopy(doc)
    for key in ("containers", "initContainers"):
        for container in out["spec"].get(key, []):
            if isinstance(container.get("image"), str):
                container["image"] = _image(container["image"], images)
    return out


def _image(reference: str, images: list[Doc]) -> str:
    name, _, tag = reference.partition(":")
    for rule in images:
        if rule["name"] == name:
            return f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"
    return reference


def build(folder: Path) -> list[Doc]:
    """The objects ``kustomize build folder`` would print (order aside)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "bases", "resources", "namespace", "images", "patches",
             "patchesStrategicMerge"}
    unknown = set(spec) - known
    if unknown:
        raise KustomizeError(f"{folder}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in [*spec.get("bases", []), *spec.get("resources", [])]:
        path = (folder / entry).resolve()
        if path.is_dir():
            docs.extend(build(path))
        elif path.is_file():
            docs.extend(_load_all(path))
        else:
            raise KustomizeError(f"{folder}: resource {entry} does not exist")
    patch_files = [entry["path"] for entry in spec.get("patches", [])]
    for entry in patch_files + list(spec.get("patchesStrategicMerge", [])):
        for patch in _load_all(folder / entry):
            matches = [i for i, d in enumerate(docs) if _identity(d) == _identity(patch)]
            if len(matches) != 1:
                raise KustomizeError(f"{folder}: patch {entry} matches {len(matches)} objects")
            docs[matches[0]] = merge(docs[matches[0]], patch)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    if spec.get("images"):  # as kustomize does: the workload kinds it knows, and any kind's
        docs = [_set_images(d, spec["images"]) if d["kind"] in WORKLOADS  # spec.containers
                else _set_pod_images(d, spec["images"]) for d in docs]
    seen = set()
    for doc in docs:
        key = (*_identity(doc), doc["metadata"].get("namespace", ""))
        if key in seen:
            raise KustomizeError(f"{folder}: {key} is defined twice")
        seen.add(key)
    return docs
