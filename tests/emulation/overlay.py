"""An overlay as the API server would hold it: the objects ``kustomize build`` renders
(``tests/manifests/kustomize.py``), the WorkflowTemplate among them, and the two lookups every
pod needs from them: a ConfigMap's and a Secret's values."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.manifests.kustomize import Doc, build

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "retrain"


class OverlayError(Exception):
    """The overlay names an object or key it does not define (a pod would not start)."""


@dataclass(frozen=True)
class Overlay:
    name: str
    docs: tuple[Doc, ...]

    @classmethod
    def render(cls, name: str) -> Overlay:
        return cls(name, tuple(build(ROOT / "manifests" / "overlays" / name)))

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        if not found:
            raise OverlayError(f"overlay {self.name}: no {kind} {name}")
        return found[0]

    def config(self, name: str) -> dict[str, str]:
        return {k: str(v) for k, v in (self.get("ConfigMap", name).get("data") or {}).items()}

    def secret(self, name: str) -> dict[str, str]:
        doc = self.get("Secret", name)
        values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
        return values

    def value(self, kind: str, name: str, key: str) -> str:
        values = self.config(name) if kind == "ConfigMap" else self.secret(name)
        if key not in values:
            raise OverlayError(f"overlay {self.name}: {kind} {name} has no key {key!r}")
        return values[key]

    def deployment_pod(self, name: str) -> dict[str, Any]:
        """A Deployment's pod template (metadata and spec)."""
        return self.get("Deployment", name)["spec"]["template"]  # type: ignore[no-any-return]
