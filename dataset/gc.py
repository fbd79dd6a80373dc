"""Garbage collection of the ingested-dataset store.

Cache entries expire in Redis by themselves (sliding TTL); what they pointed at stays on disk
until ``retrain cache gc`` removes it: datasets no live entry refers to, shard units no
remaining dataset uses, and leftovers of crashed ingestions. Anything touched within the grace
period is kept, so a run that is ingesting or training right now is never pulled from under.
The pinned evaluation set (``dataset.pinned``) is never collected, nor any dataset the caller
protects (the champions': the promotion gate and the lineage refer to them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.content_cache import ContentCache
from dataset import pinned
from dataset.store import TMP_PREFIX, remove

PINNED = "the pinned evaluation set"


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    removed_datasets: list[str] = field(default_factory=list)
    removed_units: list[str] = field(default_factory=list)
    removed_temporaries: list[str] = field(default_factory=list)
    kept_datasets: int = 0
    kept_units: int = 0
    freed_bytes: int = 0
    protected_datasets: dict[str, str] = field(default_factory=dict)  # never collected: why


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def protected(store: Path, also: dict[str, str] | None = None) -> dict[str, str]:
    """The datasets of ``store`` never collected, with why: the pinned evaluation set and
    ``also`` (dataset folder: why), those that exist."""
    found = dict(also or {})
    in_force = pinned.current(store)
    if in_force is not None:
        found[in_force.dataset_uri] = PINNED
    return {uri: why for uri, why in found.items()
            if (Path(uri) / "metadata.json").is_file()
            and pinned.store_of(uri).resolve() == store.resolve()}


def plan(store: Path, live: set[str], grace_seconds: float, now: float) -> tuple[
        list[Path], list[Path], list[Path], int, int]:
    """Pure apart from reading the store: what a collection would remove, and what it keeps
    (``live``: the dataset folders to keep, protected ones included)."""
    datasets_dir, shards_dir = store / "datasets", store / "shards"
    live_resolved = {str(Path(u).resolve()) for u in live}
    doomed_datasets, kept_datasets, temporaries = [], [], []
    for folder in (store, datasets_dir, shards_dir):
        if folder.is_dir():
            temporaries += [t for t in folder.glob(f"{TMP_PREFIX}*")
                            if _age(t, now) > grace_seconds]
    for ds in sorted(datasets_dir.glob("*")) if datasets_dir.is_dir() else []:
        if ds.name.startswith(TMP_PREFIX) or not ds.is_dir():
            continue
        young = _age(ds / "metadata.json", now) <= grace_seconds
        if str(ds.resolve()) in live_resolved or young:
            kept_datasets.append(ds)
        else:
            doomed_datasets.append(ds)
    used: set[str] = set()
    for ds in kept_datasets:
        try:
            meta = json.loads((ds / "metadata.json").read_bytes())
        except (OSError, ValueError):
            continue
        used.update(unit["id"] for unit in meta.get("units", []))
    doomed_units, kept_units = [], 0
    for unit in sorted(shards_dir.glob("*")) if shards_dir.is_dir() else []:
        if unit.name.startswith(TMP_PREFIX) or not unit.is_dir():
            continue
        if unit.name in used or _age(unit / "unit.json", now) <= grace_seconds:
            kept_units += 1
        else:
            doomed_units.append(unit)
    return doomed_datasets, doomed_units, temporaries, len(kept_datasets), kept_units


def collect(store: Path, live: set[str], grace_seconds: float = 3600.0,
            dry_run: bool = False, now: float | None = None,
            keep: dict[str, str] | None = None) -> GcReport:
    """Remove (or with ``dry_run`` only list) what no live cache entry needs, never the pinned
    evaluation set nor a dataset of ``keep`` (dataset folder: why it is kept)."""
    kept = protected(store, keep)
    datasets, units, temporaries, kept_datasets, kept_units = plan(
        store, live | set(kept), grace_seconds, time.time() if now is None else now)
    freed = sum(_size(p) for p in (*datasets, *units, *temporaries))
    if not dry_run:
        for path in (*datasets, *units, *temporaries):  # datasets first: they point at units
            remove(path)
    return GcReport(dry_run, [str(p) for p in datasets], [p.name for p in units],
                    [str(p) for p in temporaries], kept_datasets, kept_units, freed, kept)


def collect_garbage(cache: ContentCache, store: Path, grace_seconds: float = 3600.0,
                    dry_run: bool = False, keep: dict[str, str] | None = None,
                    ) -> tuple[GcReport, list[str]]:
    """The whole collection: entries whose dataset folder is gone are dropped from Redis, then
    the store is collected against the entries that remain, the pinned evaluation set and
    ``keep``. Returns the report and the keys of the dropped entries."""
    live, dead = set(), []
    for entry in cache.entries():
        if (Path(entry.dataset_uri) / "metadata.json").is_file():
            live.add(entry.dataset_uri)
        else:
            dead.append(entry.key)
    if not dry_run:
        for key in dead:
            cache.delete(key)
    return collect(store, live, grace_seconds, dry_run, keep=keep), dead
