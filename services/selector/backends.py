"""Promotion backends: where a promoted model goes. Local: the next version in the repository."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from repository.layout import next_version


@dataclass(frozen=True)
class Staged:
    """A model copied next to its final place, not yet visible to any server."""

    version: int
    location: str  # where it will be served from once published
    handle: str  # where it waits


class PromotionBackend(Protocol):
    """Two phases, so the champion record never points at a model that is not there:
    ``stage`` (may fail; nothing visible changes), then ``publish`` or ``discard``."""

    def next_version(self) -> int: ...

    def stage(self, model_uri: str, version: int) -> Staged: ...

    def publish(self, staged: Staged, at_once: bool = False) -> None:
        """Make ``staged`` the served model; ``at_once``: all traffic at once, never by
        steps (a rollback)."""
        ...

    def discard(self, staged: Staged) -> None: ...

    def resume(self, staged: Staged, previous: str | None) -> bool:
        """After a crash between ``publish``'s start and its end: finish publishing ``staged``
        (True) if that is safe, else put ``previous`` (a served location, or None) back and
        discard ``staged`` (False)."""
        ...


class LocalBackend:
    """Copies the SavedModel to ``<repo>/<name>/<version>/`` (atomic rename) and tells the server."""

    def __init__(self, repo: Path, name: str, notify: Callable[[int], None] | None = None) -> None:
        self.model_dir = repo / name
        self._notify = notify

    def next_version(self) -> int:
        return next_version(self.model_dir)

    def stage(self, model_uri: str, version: int) -> Staged:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(model_uri, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Staged(version, str(self.model_dir / str(version)), str(tmp))

    def publish(self, staged: Staged, at_once: bool = False) -> None:
        Path(staged.handle).rename(staged.location)  # atomic: the server sees all or nothing
        if self._notify:
            self._notify(staged.version)

    def discard(self, staged: Staged) -> None:
        shutil.rmtree(staged.handle, ignore_errors=True)

    def resume(self, staged: Staged, previous: str | None) -> bool:
        """The rename is the whole publication: done, or done now if the copy is complete
        (``stage`` returned before the intent was recorded)."""
        if Path(staged.location).is_dir():
            return True
        if Path(staged.handle).is_dir():
            self.publish(staged)
            return True
        return False
