"""What the two gates judged, as HTML: the data gate's validation report (every check with
its value, threshold and outcome; a blocked run names each check that blocked it) and the
promotion gate's figures and rules, side by side (the candidate's and the champion's accuracy
on the new and the pinned split, overall and per class; each rule passed or failed, with its
value and threshold)."""

from __future__ import annotations

from typing import Any

from dashboard.html import cells, esc, score, table, tag
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
    """Every figure and every rule of one decision, side by side."""
    scores = decision.get("scores") or []
    rules = decision.get("rules") or []
    if not scores and not rules:
        return "<p class=empty>no figures recorded with this decision</p>"
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
    listed = "".join(
        f"<li class={'passed' if r.get('passed') else 'failed'}>"
        f"{tag('passed' if r.get('passed') else 'failed')} <b>{esc(r.get('name'))}</b>: "
        f"{_figure(r.get('value'))} against {_figure(r.get('threshold'))}"
        + (f" — {esc(r['detail'])}" if r.get("detail") else "") + "</li>" for r in rules)
    return (f"<div class=figures><div class=scores>{figures}</div>"
            f"<ul class=rules>{listed or '<li class=empty>no rules recorded</li>'}</ul></div>")


def _class_cell(value: float, champion: float | None) -> str:
    """A class's accuracy; marked ``drop`` where the candidate does worse than the champion."""
    text = f"{value:.3f}"
    return f"<span class=drop>{text}</span>" if champion is not None and value < champion else text
