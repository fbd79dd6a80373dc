"""The gates' commands: ``validate`` (check a dataset as a run would, before any training)
and ``approve`` (let a run the data gate blocked train, or a model the live guard rolled back
be judged again)."""

from __future__ import annotations

import getpass
import json
import re
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from retrain.commands.pipeline import BLOCKED, exit_for
from retrain.commands.support import console, load_settings


def validate(
    data: Annotated[str, typer.Option("--data", help="dataset folder (path or file://)")],
    against: Annotated[Optional[str], typer.Option(help="the digest of an ingested dataset to compare with (default: the champion's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON on the last line")] = False,
) -> None:
    """Check a dataset as a run's data gate would: its profile against the champion's data.
    Ingests it first (a cache hit when it was ingested before). Exits 3 when it is blocked."""
    from core.cache_policy import Policy
    from core.redis_store import open_redis
    from dataset.cache import ingestion_cache
    from workflows import steps
    from workflows import validate as gate

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        client = handle.client
        cache = ingestion_cache(client, settings.cache_ttl_seconds)
        root = steps.resolve_root(data)
        fp = steps.fingerprint_step(root, settings.home / "statcache")
        check = steps.check_cache(cache, root, fp, Policy.parse("exact"))
        entry = check.decision.entry
        if not check.decision.hit or entry is None:
            entry = steps.ingest_step(cache, root, settings.store_dir, fp, check.key).entry
        inputs = gate.inputs_for(client, settings, entry.dataset_uri, against)
        report = gate.validate(client, settings, inputs, "block")
    if as_json:
        print(json.dumps({**report.to_dict(), "dataset_uri": entry.dataset_uri}))
    else:
        print_report(Console(), report.to_dict())
    if report.status == "blocked":
        raise typer.Exit(BLOCKED)


def print_report(out: Console, report: dict) -> None:
    """The checks of a validation report, one row each."""
    reference = report.get("reference")
    table = Table(title=f"validation: {report['status']} (against "
                        f"{reference[:12] + '…' if reference else 'no reference'})")
    for col in ("check", "status", "value", "threshold", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"pass": "green", "warn": "yellow", "block": "red"}
    for check in report.get("checks", []):
        value, threshold = check.get("value"), check.get("threshold")
        table.add_row(check["name"], f"[{colour[check['status']]}]{check['status']}[/]",
                      "-" if value is None else f"{value:.4g}",
                      "-" if threshold is None else f"{threshold:.4g}", check.get("detail", ""))
    out.print(table)


def approve(
    run_id: Annotated[Optional[str], typer.Argument(metavar="RUN|vN", help="the blocked run to let train, or vN: the version the live guard rolled back whose model may be judged again")] = None,
    version: Annotated[Optional[int], typer.Option("--version", min=1, help="the version the live guard rolled back: its model's files are judged again when they arrive (as vN)")] = None,
    by: Annotated[Optional[str], typer.Option(help="a note kept with the approval, e.g. who asked for it (the approver recorded is this machine's user, or on a cluster who the events endpoint authenticated)")] = None,
    events_url: Annotated[Optional[str], typer.Option(help="on a cluster: the events endpoint to re-submit the run's workflow to (the API key is RETRAIN_API_KEYS' first)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Resume a run the data gate blocked: its trainings run on the dataset it validated,
    with validation warn, and who approved it is kept with the run. With --events-url the
    run's workflow is submitted again through that endpoint (a cluster). With --version N
    (or vN), let the model the live guard rolled back as version N be judged again."""
    version = _version_asked(run_id, version)
    if version is not None:
        _approve_version(version, by, events_url, as_json)
        return
    assert run_id is not None
    approver = by or getpass.getuser()  # sent as a note; the receiver names the sender
    settings = load_settings()
    if events_url:
        _resubmit(settings, run_id, approver, events_url)
        return
    from core.redis_store import open_redis
    from retrain.oneshot import local_runner

    with open_redis(settings.redis_url, settings.home) as handle:
        with local_runner(settings, handle, console) as (runner, decisions):
            summary = runner.approve(run_id, f"user:{getpass.getuser()}", by or "")
        summary["decisions"] = decisions
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        from retrain.report import print_run

        print_run(Console(), summary)
    exit_for(summary["status"])


def _version_asked(run_id: str | None, version: int | None) -> int | None:
    """The version to approve (``--version N``, or ``vN`` in place of a run), None for a run;
    both, or neither, is a usage error."""
    named = run_id is not None and re.fullmatch(r"v(\d+)", run_id.strip())
    if version is not None and run_id is not None:
        raise typer.BadParameter("name a blocked run or --version N (or vN), not both",
                                 param_hint="RUN|vN")
    if version is None and run_id is None:
        raise typer.BadParameter("name a blocked run, or --version N for a version the live "
                                 "guard rolled back", param_hint="RUN|vN")
    return int(named.group(1)) if named else version


def _approve_version(version: int, note: str | None, events_url: str | None,
                     as_json: bool) -> None:
    """Forget the live guard's refusal of the model it rolled back as ``version``, audited
    with this machine's user (``user:<name>``, ``note`` beside it). Done in Redis, where the
    selector reads it: no event carries it, so ``--events-url`` is refused."""
    if events_url:
        raise typer.BadParameter(
            "a version is approved in the selector's Redis, not through the events endpoint: "
            "run `retrain approve --version N` where RETRAIN_REDIS_URL reaches the selector's "
            "Redis (on a cluster, e.g. through kubectl port-forward)", param_hint="--events-url")
    from core.redis_store import open_redis
    from services.selector.champion import ChampionStore
    from services.selector.guard_store import approve as approve_model

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        store = ChampionStore(handle.client, str(settings.model_repo.resolve()))
        entry = approve_model(store, version, f"user:{getpass.getuser()}", note or "")
    if as_json:
        print(json.dumps(entry, default=str))
    else:
        print(f"approved version {version}'s model ({str(entry['model_digest'])[:12]}, rolled "
              f"back for {entry['rule']}): judged again when it arrives, approver {entry['by']}")


def _resubmit(settings, run_id: str, approver: str, events_url: str) -> None:
    """A cluster's approval: the blocked run's parameters, validation warn, sent as a manual
    ``training.requested`` for the dataset it validated, through the authenticated endpoint.
    Who approved is who the endpoint authenticates (the API key's identity locally, the
    webhook token's holder on a cluster); ``approver`` (--by) goes with it as a note. Each
    approval is an event of its own (``approve/<run>/<random>``), so approving again after
    the workflow it started failed is not dropped as a duplicate."""
    import uuid

    from core.auth import identity
    from core.redis_store import open_redis
    from retrain.publishing import publish_event
    from workflows import record

    with open_redis(settings.redis_url, settings.home) as handle:
        summary = record.get(handle.client, run_id)
    if summary is None or summary.get("status") != "blocked":
        state = "not recorded" if summary is None else summary.get("status")
        raise typer.BadParameter(f"run {run_id} is {state}, not blocked", param_hint="RUN_ID")
    data = {"uri": summary["data"], "approves": run_id, "approved_by": approver,
            "digest": summary.get("digest"),
            "parameters": {**summary["parameters"], "validation": "warn"}}
    event, target, _ = publish_event(settings, "dev.retrain.training.requested", json.dumps(data),
                                     sink=events_url, source="retrain/approve",
                                     event_id=f"approve/{run_id}/{uuid.uuid4().hex[:8]}",
                                     structured=True)
    console.print(f"approved {run_id}: sent {event.type.value} id={event.id} to {target}; "
                  f"the approver recorded is who it authenticates (retrain's trigger: this "
                  f"key, {identity(settings.api_key)}; a cluster: the webhook token's "
                  f"holder), {approver!r} kept as a note", soft_wrap=True, highlight=False)
