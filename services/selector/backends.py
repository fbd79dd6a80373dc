"""Promotion backends: where a promoted model goes. Local: the next version in the repository."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class PromotionBackend(Protocol):
    def next_version(self) -> int: ...

    def publish(self, model_uri: str, version: int) -> str: ...

    def withdraw(self, version: int) -> None: ...


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


class LocalBackend:
    """Copies the SavedModel to ``<repo>/<name>/<version>/`` (atomic rename) and tells the server."""

    def __init__(self, repo: Path, name: str, notify: Callable[[int], None] | None = None) -> None:
        self.model_dir = repo / name
        self._notify = notify

    def next_version(self) -> int:
        return (versions(self.model_dir) or [0])[-1] + 1

    def publish(self, model_uri: str, version: int) -> str:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        final = self.model_dir / str(version)
        tmp = self.model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(model_uri, tmp)
        tmp.rename(final)
        if self._notify:
            self._notify(version)
        return str(final)

    def withdraw(self, version: int) -> None:
        shutil.rmtree(self.model_dir / str(version), ignore_errors=True)
        if self._notify:
            self._notify(version)
