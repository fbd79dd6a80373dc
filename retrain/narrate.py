"""``retrain up``'s terminal: one line for each thing a person cares about (a change noticed,
a run's ingestion decision, a run the data gate blocked, each training's end, each promotion or rejection with the scores
compared), made from the events the stack's parts send each other."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from events import Event
from events.payloads import (
    DatasetRejected,
    DatasetUpdated,
    IngestionCompleted,
    IngestionSkipped,
    ModelPromoted,
    ModelRejected,
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
    return None


def printer(console: Console) -> Callable[[Event], None]:
    """An ``observe`` for the trigger that prints each event's line through ``console``
    (the one drawing the trainings' progress, so the two never interleave)."""

    def observe(event: Event) -> None:
        text = line(event)
        if text is not None:
            console.print(text, highlight=False, markup=False, soft_wrap=True)

    return observe
