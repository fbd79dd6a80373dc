"""``retrain lineage VERSION|RUN [--json]``: why a version is served, link by link (the
decision, the model, its training, the dataset, the validation, the run, the events that
caused it), from ``workflows.lineage``. ``--json`` prints the whole record on stdout."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from retrain.commands.support import load_settings

LABEL = 11  # the width of a link's name in the human output


def lineage(
    target: Annotated[str, typer.Argument(help="a served version (7) or a run id")],
    as_json: Annotated[bool, typer.Option("--json", help="the whole lineage as JSON")] = False,
) -> None:
    """Why a version is served: its decision, model, training, dataset, validation, run and
    the events (Git commit, bucket objects, folder) that caused it."""
    from core import redact
    from core.redis_store import open_redis
    from workflows.lineage import lineage as read_lineage

    settings = load_settings()
    with open_redis(settings.redis_url, settings.home) as handle:
        found = read_lineage(handle.client, str(settings.model_repo.resolve()), target)
    text = redact.redact(json.dumps(found, indent=1 if as_json else None, default=str))
    if as_json:
        print(text)
        return
    print("\n".join(render(json.loads(text))))


# the human output: one block per link -----------------------------------------------------------
def render(found: dict[str, Any]) -> list[str]:
    """The lineage as lines: a heading, then one block per link."""
    version = found["version"]
    model = found["model"] or {}
    heading = (f"version {version}" + (" · served now" if model.get("serving") else
                                       " · served before, replaced since")
               if version is not None else f"run {found['run']['run_id']} · no version")
    guard = found.get("guard")
    blocks = [("decision", _decision(found["decision"])),
              ("guard", [str(guard["summary"])] if guard else []),
              ("model", _model(found["model"])),
              ("training", _training(found["training"])), ("dataset", _dataset(found["dataset"])),
              ("validation", _validation(found["validation"])), ("run", _run(found["run"])),
              ("events", _events(found["events"]))]
    lines = [heading]
    for name, block in blocks:
        lines.append("")
        for n, text in enumerate(block or ["-"]):
            lines.append(f"{name if n == 0 else '':<{LABEL}}{text}")
    return lines


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "-"


def _short(digest: Any) -> str:
    return f"{str(digest)[:16]}…" if digest else "-"


def _decision(d: dict[str, Any]) -> list[str]:
    lines = [str(d["summary"])]
    if d.get("type"):
        lines.append(f"{d['type']} at {_when(d.get('at'))} · candidate "
                     f"{_num(d.get('candidate_accuracy'))} vs champion "
                     f"{_num(d.get('champion_accuracy'))} (version "
                     f"{_num(d.get('champion_version'))})")
    for s in d.get("scores") or []:
        lines.append(f"score on the {s.get('split')} split ({_short(s.get('dataset_digest'))}): "
                     f"candidate {_num(s.get('candidate'))} vs champion {_num(s.get('champion'))}")
        for who in ("candidate", "champion"):
            per_class = s.get(f"{who}_per_class") or []
            if per_class:
                lines.append(f"  {who} per class: " + " ".join(f"{v:.3f}" for v in per_class))
    for r in d.get("rules") or []:
        lines.append(f"rule {r.get('name')}: {'passed' if r.get('passed') else 'FAILED'} "
                     f"(value {_num(r.get('value'))}, threshold {_num(r.get('threshold'))})"
                     + (f" {r['detail']}" if r.get("detail") else ""))
    lines += [f"{'also' if d.get('type') else 'decided'}: {o.get('type')} "
              f"{o.get('model_type')}: {o.get('reason')}" for o in d.get("others") or []]
    return lines


def _model(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return ["none: nothing was served from this run"]
    match = {True: "the same files as the trained model",
             False: "DIFFERENT files from the trained model's", None: "not compared"}
    return [f"{m['variant']} at {m['location']}" + ("" if m["present"] else " (gone)"),
            f"files digest {_short(m['files_digest'])} ({match[m['digest_matches']]})",
            (f"test accuracy {_num(m['accuracy'])} · trained on dataset "
             f"{_short(m['dataset_digest'])} · from {m.get('trained_model') or '-'}")]


def _training(t: dict[str, Any]) -> list[str]:
    if "variants" in t:
        return [line for variant in t["variants"].values() for line in _training(variant)]
    if t.get("status") is None:
        return [f"{t['variant']}: not trained"]
    how = (f"reused from the training cache (trained by run {t['trained_by']})" if t["cached"]
           else f"trained by this run ({t['cache_reason'] or 'no cache decision recorded'})")
    params = ", ".join(f"{k}={v}" for k, v in (t.get("parameters") or {}).items())
    warm = t.get("warm_start")
    started = ("from scratch" if warm is None else
               f"warm-started from version {warm['from_version']}" if warm.get("from_version")
               else warm["note"])
    return [f"{t['variant']}: {how}",
            (f"{_seconds(t.get('seconds'))}, {_num(t.get('steps'))} steps, at "
             f"{_when(t.get('trained_at'))}; val accuracy {_num(t.get('val_accuracy'))}"),
            f"parameters {params or '-'} · code {t.get('code_version') or 'not recorded'}",
            f"started {started}"]


def _dataset(d: dict[str, Any]) -> list[str]:
    lines = [f"digest {_short(d['digest'])} (before: {_short(d.get('previous_digest'))}) at "
             f"{d.get('uri') or '-'}" + ("" if d.get("present") else " (gone)"),
             "records " + (", ".join(f"{k} {v}" for k, v in (d.get("records") or {}).items())
                           or "-")]
    for kind in ("ingested", "reused"):
        units = d["units"][kind]
        lines.append(f"{kind}: " + ("; ".join(f"{u.get('source') or u['id'][:12]} "
                                              f"({u.get('split')})" for u in units) or "none"))
    return lines


def _validation(v: dict[str, Any]) -> list[str]:
    lines = [f"{v.get('status') or 'none'}" + (f" · compared with {_short(v.get('reference'))}"
                                               if v.get("reference") else "")
             + (" · cached" if v.get("cached") else "") + (f" · {v['note']}" if v.get("note")
                                                           else "")]
    lines += [f"{c.get('status')}: {c.get('name')} = {_num(c.get('value'))} (threshold "
              f"{_num(c.get('threshold'))}) {c.get('detail') or ''}".rstrip()
              for c in v.get("checks") or []]
    if v.get("approval"):
        lines.append(f"approved by {v['approval'].get('by')}")
    return lines


def _run(r: dict[str, Any]) -> list[str]:
    params = ", ".join(f"{k}={v}" for k, v in (r.get("parameters") or {}).items())
    return [(f"{r['run_id']} · {r.get('status')} · {r.get('trigger')} · started "
             f"{_when(r.get('started_at'))} · took {_seconds(r.get('seconds'))}"),
            f"parameters {params or '-'}"] + ([f"error: {r['error']}"] if r.get("error") else []) + [
        f"covers {c.get('run_id')} (event {c.get('event_id')}, coalesced into this run)"
        for c in r.get("covers") or []]


def _events(events: list[dict[str, Any]]) -> list[str]:
    from workflows.lineage import origin_text

    lines = []
    for e in events:
        if e.get("type") is None:
            lines.append(f"{e['note']}")
            continue
        lines.append(f"{e['type']} {e.get('id')} from {e.get('source')} at {e.get('time')} "
                     f"({e['role']})")
        lines.append(f"  {origin_text(e.get('origin'))}")
    return lines
