"""Human-readable output: run summaries, status and the demo's timeline."""

from __future__ import annotations

import json
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from core import timeline


def print_run(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"run {summary['run_id']}: {summary['status']} "
                        f"in {summary.get('seconds', 0):.1f}s")
    table.add_column("step")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("detail")
    for step in summary["steps"]:
        detail = step.get("reason") or step.get("error") or ""
        if "val_accuracy" in step:
            detail = f"val accuracy {step['val_accuracy']:.4f}" + (
                f"; {step['reason']}" if step.get("cached") else "")
        table.add_row(step["name"], step["status"], f"{step['seconds']:.2f}", str(detail)[:90])
    console.print(table)
    report = summary.get("validation") or {}
    for check in report.get("checks", []):
        if check["status"] != "pass":
            colour = "red" if check["status"] == "block" else "yellow"
            console.print(f"  [{colour}]{check['name']}: {check['status']}[/] — {check['detail']} "
                          f"(value {check['value']}, threshold {check['threshold']})",
                          soft_wrap=True, highlight=False)
    if summary.get("status") == "blocked" and report.get("untrainable"):
        console.print(f"  blocked by the data gate: {report['untrainable']}",
                      soft_wrap=True, highlight=False)
    elif summary.get("status") == "blocked":
        console.print(f"  blocked by the data gate; to train anyway: retrain approve "
                      f"{summary['run_id']}", soft_wrap=True, highlight=False)
    if summary.get("status") == "deferred":
        console.print(f"  {summary.get('reason')}: nothing trained; the changes add up, and "
                      "the first run past RETRAIN_MIN_CHANGE trains on all of them (--force "
                      "trains now)", soft_wrap=True, highlight=False)
    if summary.get("covered_by"):
        console.print(f"  covered by run {summary['covered_by']}", soft_wrap=True,
                      highlight=False)
    if summary.get("covers"):
        console.print(f"  covers {len(summary['covers'])} earlier change(s): "
                      + ", ".join(c["run_id"] for c in summary["covers"]), soft_wrap=True,
                      highlight=False)
    if summary.get("approval"):
        approval = summary["approval"]
        console.print(f"  approved by {approval['by']} despite "
                      f"{', '.join(approval.get('overruled', [])) or 'no failed check'}",
                      soft_wrap=True, highlight=False)
    for decision in summary.get("decisions", []):
        console.print(f"  {decision['model_type']}: {decision['decision']} — {decision['reason']}"
                      + (f" (version {decision['version']})" if decision.get("version") else ""))
    if summary.get("error") and summary.get("status") not in ("deferred", "coalesced"):
        console.print(f"[red]error:[/] {summary['error']}")


def collect_status(client: redis.Redis, model_repo: str) -> dict[str, Any]:
    from dataset.cache import ingestion_cache
    from services.selector.champion import ChampionStore
    from services.trainer import progress
    from workflows import record

    runs = record.recent_runs(client, 0, 10).runs
    # the trainings that reported last, whether a local run recorded them or not
    training = {f"{run_id}:{model}": {"state": found.state, **(found.latest or {})}
                for (run_id, model), found in progress.read_many(
                    client, progress.trainings(client), points=False).items() if found.exists}
    champion = ChampionStore(client, model_repo).get()
    entries = ingestion_cache(client, 1).entries()
    return {
        "runs": runs,
        "cache": [e.__dict__ for e in entries[-10:]],  # the newest; `retrain cache ls` has all
        "cache_entries": len(entries),
        "champion": champion.__dict__ if champion else None,
        "training": training,  # the latest trainings' progress, as far as each went
    }


def print_status(console: Console, info: dict[str, Any]) -> None:
    champion = info["champion"]
    console.print("[bold]champion:[/] " + (
        f"version {champion['version']} ({champion['model_type']}, accuracy "
        f"{champion['accuracy']:.4f}, run {champion['run_id']})" if champion else "none yet"))
    runs = Table(title="recent runs")
    for col in ("run", "trigger", "status", "cache", "seconds", "models"):
        runs.add_column(col)
    for run in info["runs"]:
        cache = run.get("cache") or {}
        models = ", ".join(
            f"{m}:{r['val_accuracy']:.3f}" if r["status"] == "trained" else f"{m}:{r['status']}"
            for m, r in run.get("models", {}).items())
        runs.add_row(run["run_id"], run.get("trigger", ""),
                     run["status"] + _validation(run.get("validation")) + _why(run),
                     ("hit" if cache.get("hit") else "miss") if cache else "-",
                     f"{run.get('seconds', 0):.1f}", models)
    console.print(runs)
    cache = Table(title=f"cache entries (newest {len(info['cache'])} of {info['cache_entries']}; "
                        "all: retrain cache ls)")
    for col in ("key", "digest", "records", "hits", "dataset"):
        cache.add_column(col)
    for entry in info["cache"]:
        cache.add_row(entry["key"][:12], entry["digest"][:12], json.dumps(entry["records"]),
                      str(entry["hits"]), entry["dataset_uri"])
    console.print(cache)
    for name, p in info["training"].items():
        console.print(f"training {name}: {p.get('state')} step {p.get('step')}/{p.get('planned')} "
                      f"loss {p.get('loss')} acc {p.get('accuracy')}")


def _why(run: dict[str, Any]) -> str:
    """What a status cell adds for a run that trained nothing on purpose."""
    if run.get("status") == "coalesced":
        return f" (covered by {run.get('covered_by')})"
    if run.get("status") == "deferred":
        return f" ({str(run.get('reason') or '').removeprefix('deferred: ')})"
    return ""


def _validation(report: dict[str, Any] | None) -> str:
    """What a run's status cell adds about its validation: the checks that did not pass."""
    failed = [f"{c['name']}:{c['status']}" for c in (report or {}).get("checks", [])
              if c["status"] != "pass"]
    return f" ({', '.join(failed)})" if failed else ""


def print_timeline(console: Console, entries: list[timeline.Entry], start: float) -> None:
    table = Table(title="timeline")
    for col in ("t+s", "what", "step / event", "seconds", "cache", "accuracy", "version", "note"):
        table.add_column(col, overflow="fold")
    for e in entries:
        d = e.detail
        accuracy = d.get("candidate_accuracy", d.get("val_accuracy"))
        cache = ""
        if e.step == "check_cache":
            cache = "hit" if d.get("hit") else "miss"
        elif e.step.startswith("train:") and "cached" in d:
            cache = "hit" if d["cached"] else "miss"
        note = d.get("reason") or d.get("trigger") or d.get("model_type") or d.get("error") or ""
        if e.kind == "event" and d.get("model_type") and d.get("reason"):
            note = f"{d['model_type']}: {d['reason']}"
        table.add_row(
            f"{e.at - start:6.1f}", e.kind, e.step,
            f"{d['seconds']:.2f}" if isinstance(d.get("seconds"), (int, float)) else "",
            cache, f"{accuracy:.4f}" if isinstance(accuracy, float) else "",
            str(d.get("version", "")), str(note),  # wrapped at words, never cut
        )
    console.print(table)
