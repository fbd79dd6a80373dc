"""``retrain golden``: the pinned evaluation set, the test split every candidate and the
champion are also scored on before a promotion (``dataset.pinned``)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from retrain.commands.support import console, load_settings

golden_app = typer.Typer(no_args_is_help=True,
                         help="The pinned evaluation set the promotion gate scores every model on.")


@golden_app.command("set")
def golden_set(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://) whose test split becomes the pinned set")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest DIR as retrain ingest does (fingerprint, cache, ingestion) and pin its test
    split: from then on every candidate and the champion are also scored on it."""
    from dataset import pinned
    from dataset.layout import resolve_root
    from events.payloads import RunParameters
    from retrain.oneshot import run_once

    settings = load_settings()
    resolve_root(data)  # a folder that is not there: one line and exit 1, before anything runs
    before = pinned.current(settings.store_dir)
    summary = run_once(settings, data, RunParameters(models=(), validation="off"), console)
    if summary["status"] != "succeeded":
        from retrain.report import print_run

        print_run(Console(), summary)
        raise typer.Exit(1)
    chosen = pinned.pin(settings.store_dir, summary["dataset_uri"], pinned.CHOSEN)
    info = _describe(chosen)
    if as_json:
        print(json.dumps({**info, "replaced": _describe(before) if before else None}))
        return
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"pinned the test split of {data}: dataset {chosen.key[:12]}, digest "
              f"{chosen.digest[:12]}, {info['test_images']} test images"
              + (f" (replacing {before.key[:12]}, pinned by {before.how})"
                 if before and before.key != chosen.key else ""))


@golden_app.command("show")
def golden_show(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which evaluation set is pinned: its dataset's key and digest, its test images per
    class, when and how it was chosen, and whether its shards still check out."""
    from dataset import pinned

    settings = load_settings()
    chosen = pinned.current(settings.store_dir)
    if chosen is None:
        raise pinned.PinnedSetError(
            f"no evaluation set is pinned in {settings.store_dir}: the first dataset a run trains "
            "on is pinned, or choose one with retrain golden set --data DIR")
    info = _describe(chosen)
    if as_json:
        print(json.dumps(info))
        return
    from core.durations import ago
    from dataset.layout import CLASS_NAMES

    out = Console(soft_wrap=True, highlight=False)
    out.print(f"pinned evaluation set  {chosen.key}")
    out.print(f"  digest   {chosen.digest}")
    out.print(f"  dataset  {chosen.dataset_uri}")
    counts = ", ".join(f"{name} {n}" for name, n in zip(CLASS_NAMES, info["per_class"],
                                                         strict=False))
    out.print(f"  test     {info['test_images']} images: {counts}")
    out.print(f"  set      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(chosen.set_at))} "
              f"({ago(time.time() - chosen.set_at)}) by {chosen.how}")
    if info["problem"]:
        out.print(f"  [bold red]cannot be trusted:[/] {info['problem']}: every candidate is "
                  "refused until another set is chosen")


def _describe(chosen: Any) -> dict[str, Any]:
    """The pinned set as ``show --json`` prints it."""
    from dataclasses import asdict

    from dataset.store import load_metadata, verify

    try:
        test = load_metadata(chosen.dataset_uri)["splits"]["test"]  # type: ignore[index]
        count, per_class = int(test["count"]), [int(n) for n in test["per_class"]]
    except (OSError, ValueError, KeyError, TypeError):
        count, per_class = 0, []
    return {**asdict(chosen), "test_images": count, "per_class": per_class,
            "problem": verify(chosen.dataset_uri)}
