"""``retrain up``'s terminal: one line for each thing a person cares about (a change noticed,
a run's ingestion decision, a run the data gate blocked, each training's end, each promotion
or rejection with the scores compared, each rollback by the live guard with the rule and
figures), made from the events the stack's parts send each other; and each version the guard
let settle, which no event tells, from the guard's own outcomes (``settled``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from events import Event
from events.payloads import (
    DatasetRejected,
    DatasetUpdated,
    IngestionCompleted,
    IngestionSkipped,
    LiveFigures,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelTrained,
    TrainingFailed,
    TrainingRequested,
)


def line(event: Event) -> str | None:
    """The line ``event`` deserves, or None (the plumbing between the stack's parts)."""
    d = event.data
    if isinstance(d, DatasetUpdated):
        f = d.files
        counts = ", ".join(f"{len(v)} {k}" for k, v in (("added", f.added), ("changed", f.changed),
                                                       ("removed", f.removed)) if v)
        return f"change noticed ({d.trigger}): {d.uri}" + (f" ({counts})" if counts else "")
    if isinstance(d, TrainingRequested):
        return f"training requested: {d.uri}"
    if isinstance(d, IngestionSkipped):
        return f"run {d.run_id}: ingestion skipped, {d.reason}"
    if isinstance(d, IngestionCompleted):
        return (f"run {d.run_id}: ingested {sum(d.records.values()):,} records in {d.seconds:.1f} s "
                f"({d.new_shards} new shard unit(s), {d.reused_shards} reused)")
    if isinstance(d, DatasetRejected):
        blocking = "; ".join(f"{c.name} ({c.detail})" for c in d.checks if c.status == "block")
        return (f"run {d.run_id}: BLOCKED by the data gate, nothing trained: {blocking} "
                f"(retrain approve {d.run_id} to train anyway)")
    if isinstance(d, ModelTrained):
        how = ("reused from the training cache" if d.cached
               else f"trained in {d.seconds:.1f} s")
        return f"run {d.run_id}: {d.model_type} {how}, val accuracy {d.val_accuracy:.4f}"
    if isinstance(d, TrainingFailed):
        return f"run {d.run_id}: {d.model_type} FAILED: {d.reason.splitlines()[0][:200]}"
    if isinstance(d, ModelPromoted):
        return f"run {d.run_id}: {d.model_type} PROMOTED to version {d.version}: {d.reason}"
    if isinstance(d, ModelRejected):
        return f"run {d.run_id}: {d.model_type} rejected: {d.reason}"
    if isinstance(d, ModelRolledBack):
        return rolled_back(d)
    return None


def rolled_back(d: ModelRolledBack) -> str:
    """A rollback by the live guard: the version, the rule it broke and why, both windows'
    figures, and which version serves now."""
    broken = next((r for r in d.rules if r.name == d.rule), None)
    why = f"{d.rule}: {broken.detail}" if broken is not None and broken.detail else d.rule
    return (f"version {d.version} ROLLED BACK by the live guard ({why}): "
            f"{figures(d.window)} against version {d.previous_version}'s "
            f"{figures(d.baseline)}; version {d.restored_version} serves now "
            f"(version {d.previous_version}'s model)")


def settled(version: int, state: dict[str, Any]) -> str | None:
    """A version the live guard watched and let settle (None for any other outcome: a
    rollback has its event's line)."""
    if state.get("state") != "settled":
        return None
    window, baseline = state.get("window"), state.get("baseline")
    return (f"version {version} settled: {figures(LiveFigures(**window) if window else None)}"
            f" against version {state.get('previous_version')}'s "
            f"{figures(LiveFigures(**baseline) if baseline else None)}; every rule passed")


def figures(f: LiveFigures | None) -> str:
    """A window's figures in a few words."""
    if f is None:
        return "no window (nothing served before it on this server)"
    p99 = "-" if f.p99_seconds is None else f"{f.p99_seconds * 1000:.0f} ms"
    took = f" in {f.seconds:.1f} s" if f.seconds else ""
    return (f"{f.requests} answers{took}, {f.errors} errors ({f.error_rate:.1%}), "
            f"p99 {p99}")


def printer(console: Console) -> Callable[[Event], None]:
    """An ``observe`` for the trigger that prints each event's line through ``console``
    (the one drawing the trainings' progress, so the two never interleave)."""

    def observe(event: Event) -> None:
        text = line(event)
        if text is not None:
            console.print(text, highlight=False, markup=False, soft_wrap=True)

    return observe


def guard_printer(console: Console) -> Callable[[int, dict[str, Any]], None]:
    """An observer of the live guard's outcomes (``Guard.on_outcome``) that prints a line
    for each version that settles."""

    def observe(version: int, state: dict[str, Any]) -> None:
        text = settled(version, state)
        if text is not None:
            console.print(text, highlight=False, markup=False, soft_wrap=True)

    return observe
