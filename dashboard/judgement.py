"""What the gates judged, as HTML: the data gate's validation report (every check with
its value, threshold and outcome; a blocked run names each check that blocked it), the
promotion gate's figures and rules, side by side (the candidate's and the champion's accuracy
on the new and the pinned split, overall and per class; each rule passed or failed, with its
value and threshold), and the live guard's: a rollback's figures (the version's window and
the previous version's, every rule) and what the guard made of a promoted version."""

from __future__ import annotations

from typing import Any

from dashboard.html import cells, esc, score, table, tag, when
from dataset.layout import CLASS_NAMES


def _figure(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else esc("-" if value is None else value)


# the data gate --------------------------------------------------------------------------------
def validation_report(report: dict[str, Any] | None, run_status: str | None = None) -> str:
    """The run's validation: its verdict, the dataset compared with, every check; when the
    gate blocked the run, first each check that did, by name."""
    if not report or report.get("status") is None:
        note = (report or {}).get("note") or "no validation report: a run from before the data gate"
        return ("<section class=card id=validation><h2>validation</h2>"
                f"<p class=empty>{esc(note)}</p></section>")
    checks = report.get("checks") or []
    status = str(report.get("status"))
    blocking = [c for c in checks if c.get("status") == "block"]
    blocked = ""
    if status == "blocked" or run_status == "blocked":
        named = "; ".join(f"<b>{esc(c.get('name'))}</b> ({esc(c.get('detail'))})"
                          for c in blocking) or "no check is named"
        blocked = (f"<p class=error id=blocked>blocked before any training by "
                   f"{len(blocking)} failed check(s): {named}</p>")
    reference = report.get("reference")
    rows = [cells(esc(c.get("name")), tag(c.get("status")), _figure(c.get("value")),
                  _figure(c.get("threshold")), esc(c.get("detail"))) for c in checks]
    approval = report.get("approval")
    approved = (f"<p>approved by {esc(approval.get('by'))}: trained despite the checks "
                "that blocked it</p>" if isinstance(approval, dict) else "")
    return ("<section class=card id=validation><h2>validation: "
            f"{tag(status)}</h2>{blocked}{approved}<p>compared with "
            + (f"<code>{esc(reference)}</code>" if reference else "no reference (the first dataset)")
            + (" · the report was cached" if report.get("cached") else "") + "</p>"
            + table(("check", "outcome", "value", "threshold", "detail"), rows, "no checks")
            + "</section>")


# the promotion gate --------------------------------------------------------------------------
def rules_line(decision: dict[str, Any]) -> str:
    """Each rule of the gate as a passed or failed label, in a line."""
    rules = decision.get("rules") or []
    return " ".join(tag(f"{'✓' if r.get('passed') else '✗'} {r.get('name')}",
                        "passed" if r.get("passed") else "failed") for r in rules)


def decision_figures(decision: dict[str, Any]) -> str:
    """Every figure and every rule of one decision, side by side (a rollback by the live
    guard: both windows' live figures), and a promoted version's guard state when known."""
    if decision.get("type") == "rolledback":
        return live_figures(decision)
    guard = guard_line(decision.get("guard"))
    scores = decision.get("scores") or []
    rules = decision.get("rules") or []
    if not scores and not rules:
        return "<p class=empty>no figures recorded with this decision</p>" + guard
    rows = []
    for split in scores:
        champion = split.get("champion_per_class") or []
        for who in ("candidate", "champion"):
            per_class = split.get(f"{who}_per_class") or []
            marks = [_class_cell(v, champion[i] if who == "candidate" and i < len(champion)
                                 else None) for i, v in enumerate(per_class)]
            digest = str(split.get("dataset_digest") or "")[:12]
            name = f"{esc(split.get('split'))} <code>{esc(digest)}</code>"
            rows.append(cells(name if who == "candidate" else "", esc(who),
                              score(split.get(who)), *(marks or ["-"] * len(CLASS_NAMES))))
    figures = table(("split", "model", "overall", *CLASS_NAMES), rows, "no scores recorded")
    return (f"<div class=figures><div class=scores>{figures}</div>{_rules(rules)}</div>"
            + guard)


def _rules(rules: list[dict[str, Any]]) -> str:
    listed = "".join(
        f"<li class={'passed' if r.get('passed') else 'failed'}>"
        f"{tag('passed' if r.get('passed') else 'failed')} <b>{esc(r.get('name'))}</b>: "
        f"{_figure(r.get('value'))} against {_figure(r.get('threshold'))}"
        + (f" — {esc(r['detail'])}" if r.get("detail") else "") + "</li>" for r in rules)
    return f"<ul class=rules>{listed or '<li class=empty>no rules recorded</li>'}</ul>"


# the live guard ------------------------------------------------------------------------------
def live_figures(state: dict[str, Any]) -> str:
    """A window of live traffic beside the previous version's (a rollback's, a settled
    version's): answers, errors, error rate, p99 latency and predicted classes; every rule
    the guard judged."""
    rows = []
    for who in ("window", "baseline"):
        f = state.get(who)
        if not isinstance(f, dict):
            rows.append(cells(esc(who), "-", "-", "-", "-", "-", "-",
                              esc("none: nothing served before it on this server")))
            continue
        p99 = f.get("p99_seconds")
        classes = " ".join(str(c) for c in f.get("classes") or []) or "-"
        rows.append(cells(esc(who), esc(f.get("version")), esc(f.get("requests")),
                          esc(f.get("errors")), f"{float(f.get('error_rate') or 0):.2%}",
                          "-" if p99 is None else f"{float(p99) * 1000:.1f} ms",
                          esc(f"{f.get('seconds') or 0:.1f} s"), f"<code>{esc(classes)}</code>"))
    figures = table(("window", "version", "answers", "errors", "error rate", "p99", "over",
                     "answers per class"), rows, "no figures recorded")
    return (f"<div class='figures live'><div class=scores>{figures}</div>"
            f"{_rules(state.get('rules') or [])}</div>")


def guard_line(state: dict[str, Any] | None) -> str:
    """What the live guard made of a promoted version, in a line (nothing when unknown)."""
    if not isinstance(state, dict) or not state.get("state"):
        return ""
    kind = str(state["state"])
    window = state.get("window") or {}
    if kind == "settled":
        said = (f"settled after {window.get('requests')} answers, {window.get('errors')} "
                f"errors, against version {state.get('previous_version')}")
    elif kind == "rolledback":
        said = (f"rolled back ({state.get('rule')}) at {when(state.get('at'))}: version "
                f"{state.get('restored_version')} replaced it")
    elif kind == "watching":
        said = f"watching against version {state.get('previous_version')}"
    elif kind == "superseded":
        said = f"replaced by version {state.get('by')} before its window ended, never settled"
    else:
        said = str(state.get("reason") or "")
    return f"<p class=guard>live guard: {tag(kind)} {esc(said)}</p>"


def _class_cell(value: float, champion: float | None) -> str:
    """A class's accuracy; marked ``drop`` where the candidate does worse than the champion."""
    text = f"{value:.3f}"
    return f"<span class=drop>{text}</span>" if champion is not None and value < champion else text
