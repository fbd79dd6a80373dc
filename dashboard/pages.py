"""The dashboard's pages, rendered here as HTML with inline SVG charts. Every value that
came from outside (event sources, reasons, file names, run ids) goes through ``esc``: a
``<script>`` in an event's source is shown as text."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from dashboard.html import cells as _cells
from dashboard.html import esc
from dashboard.html import kind as _kind
from dashboard.html import score as _score
from dashboard.html import table as _table
from dashboard.html import when as _when
from dashboard.judgement import decision_figures, rules_line, validation_report
from dashboard.lineage_page import lineage_link

__all__ = ["esc"]  # the pages' escaping, where the error pages look for it


def layout(title: str, body: str, actions: str = "") -> str:
    """The page: navigation, the live part (``<main>``, refreshed every 2 s by ui.js) and
    forms that are left alone while someone types in them."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>retrain · {esc(title)}</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'><link rel=stylesheet href=/static/ui.css></head><body>"
        "<nav><b>retrain</b><a href=/>overview</a><a href=/models>models</a>"
        "<a href=/events>events</a><a href=/try>try it</a></nav>"
        f"<main id=live>{body}</main>{actions}<script src=/static/ui.js></script></body></html>")


# the overview ----------------------------------------------------------------------------------
def champion_card(champion: dict[str, Any] | None, since: float | None,
                  replaced: dict[str, Any] | None) -> str:
    if champion is None:
        return "<section class=card id=champion><h2>served model</h2><p>none yet</p></section>"
    was = (f"replaced version {esc(replaced['version'])} ({esc(replaced['model_type'])}, "
           f"{_score(replaced['accuracy'])})" if replaced else "the first model served")
    return (
        "<section class=card id=champion><h2>served model</h2>"
        f"<p class=big>version <b id=champion-version>{esc(champion['version'])}</b> · "
        f"{esc(champion['model_type'])} · test accuracy {_score(champion['accuracy'])}</p>"
        f"<p>since {_when(since)}; {was}; trained by run "
        f"<a href='/runs/{quote(str(champion['run_id']))}'>{esc(champion['run_id'])}</a> · "
        f"{lineage_link(champion['version'], 'why is it served?')}</p>"
        "</section>")


def runs_table(page: dict[str, Any]) -> str:
    rows = []
    for run in page["runs"]:
        outcome = "; ".join(part for part in (
            f"trained {', '.join(run['trained'])}" if run["trained"] else "",
            f"reused {', '.join(run['cached'])}" if run["cached"] else "",
            f"failed {', '.join(run['failed'])}" if run["failed"] else "",
            run["error"] or "") if part)
        cache = run["cache"] or "-"
        rows.append(_cells(
            f"<a href='/runs/{quote(run['run_id'])}'>{esc(run['run_id'])}</a>",
            esc(run["trigger"]), f"<span class='tag {esc(cache)}' title='{esc(run['cache_reason'])}'>"
            f"{esc(cache)}</span>", f"<span class='tag {esc(run['status'])}'>{esc(run['status'])}</span>",
            esc(_when(run["started_at"])),
            esc(f"{run['seconds']:.1f} s" if isinstance(run["seconds"], (int, float)) else "…"),
            esc(outcome)))
    more = (f"<p><a href='/?offset={page['next']}'>older runs</a></p>" if page["next"] else "")
    return ("<section><h2>runs</h2>"
            + _table(("run", "trigger", "cache", "status", "started", "took", "outcome"), rows,
                     "no runs yet") + more + "</section>")


def sources_table(sources: list[dict[str, Any]]) -> str:
    rows = [_cells(esc(s["name"]), esc(s.get("digest") or "-")[:16], esc(s.get("changes", "-")),
                   esc(s.get("depth", "-"))) for s in sources]
    return ("<section><h2>watched sources</h2>"
            + _table(("source", "last digest", "changes sent", "outbox depth"), rows,
                     "no watcher has run yet") + "</section>")


# a run ------------------------------------------------------------------------------------------
def step_chart(steps: list[dict[str, Any]], width: int = 760) -> str:
    """The run's steps as bars on one time axis (seconds from the first step's start)."""
    timed = [s for s in steps if s.get("started_at") and s.get("ended_at")]
    if not timed:
        return "<p class=empty>no steps yet</p>"
    start = min(s["started_at"] for s in timed)
    span = max(max(s["ended_at"] for s in timed) - start, 0.001)
    label, row = 150, 22
    bars = []
    for i, s in enumerate(timed):
        x = label + (s["started_at"] - start) / span * (width - label - 10)
        w = max(2.0, (s["ended_at"] - s["started_at"]) / span * (width - label - 10))
        y = i * row + 4
        kind = "cached" if s.get("cached") else esc(s.get("status"))
        title = esc(f"{s['name']}: {s.get('status')} in {s.get('seconds', 0):.2f} s"
                    + (f" — {s['reason']}" if s.get("reason") else ""))
        bars.append(f"<text x=4 y={y + 14}>{esc(s['name'])}</text>"
                    f"<rect class='{kind}' x={x:.1f} y={y} width={w:.1f} height=16>"
                    f"<title>{title}</title></rect>")
    height = len(timed) * row + 24
    axis = (f"<text x={label} y={height - 4}>0 s</text>"
            f"<text x={width - 60} y={height - 4}>{span:.2f} s</text>")
    return (f"<svg class=timeline viewBox='0 0 {width} {height}' width={width} "
            f"height={height} role=img aria-label='steps to scale'>{''.join(bars)}{axis}</svg>")


def curve(points: list[dict[str, Any]], field: str, width: int = 360, height: int = 140) -> str:
    """``field`` (loss or accuracy) against the step, as a line."""
    pts = [(p["step"], p[field]) for p in points
           if isinstance(p.get(field), (int, float)) and isinstance(p.get("step"), (int, float))]
    if len(pts) < 2:
        return f"<p class=empty>no {esc(field)} points yet</p>"
    x0, x1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    hi = hi if hi > lo else lo + 1
    coords = " ".join(f"{10 + (s - x0) / (x1 - x0) * (width - 20):.1f},"  # the labels clear
                      f"{height - 20 - (v - lo) / (hi - lo) * (height - 40):.1f}" for s, v in pts)
    return (f"<svg class=curve viewBox='0 0 {width} {height}' width={width} height={height} "
            f"role=img aria-label='{esc(field)} by step'><polyline points='{coords}'/>"
            f"<text x=10 y=12>{esc(field)} {hi:.3f}</text>"
            f"<text x=10 y={height - 4}>{lo:.3f} · steps {x0}–{x1}</text></svg>")


def run_page(run: dict[str, Any]) -> str:
    s = run["summary"]
    cache = s.get("cache") or {}
    parts = ""
    for step in s.get("steps", []):
        if step["name"] == "check_cache":
            made_of = step.get("parts") or {}
            parts = (f"<p>key <code>{esc(step.get('key'))}</code> · policy "
                     f"{esc(step.get('policy'))}</p><p id=key-parts>from: content digest "
                     f"<code>{esc(s.get('digest'))}</code> · ingestion code "
                     f"<code>{esc(made_of.get('code_version'))}</code> · parameters "
                     f"<code>{esc(json.dumps(made_of.get('params', {}), sort_keys=True))}</code></p>")
    models = []
    for model, c in run["curves"].items():
        result = (s.get("models") or {}).get(model, {})
        state = "cached" if result.get("cached") else (
            result.get("status") or c["state"]
            or ("blocked" if s.get("status") == "blocked" else "waiting"))
        models.append(
            f"<section class=card><h3>{esc(model)} · <span class='tag {esc(state)}'>{esc(state)}"
            f"</span></h3><p>{esc(result.get('reason') or '')}</p>"
            f"{curve(c['points'], 'loss')}{curve(c['points'], 'accuracy')}</section>")
    decisions = decision_rows(run["decisions"], lambda d: (
        esc(d.get("model_type")),
        f"<span class='tag {_kind(d.get('type'))}'>{esc(d.get('type'))}</span>",
        _score(d.get("candidate_accuracy")),
        _score(d.get("champion_accuracy")), lineage_link(d.get("version")),
        esc(d.get("reason"))))
    return (
        f"<h1>run <span id=run-id>{esc(s['run_id'])}</span></h1>"
        f"<p>{esc(s.get('trigger'))} · <span class='tag {esc(s.get('status'))}'>{esc(s.get('status'))}"
        f"</span> · started {_when(s.get('started_at'))} · data <code>{esc(s.get('data'))}</code></p>"
        f"<section class=card id=cache-decision><h2>cache: {'hit' if cache.get('hit') else 'miss'}</h2>"
        f"<p>{esc(cache.get('reason'))}</p>{parts}</section>"
        + validation_report(s.get("validation"), s.get("status"))
        + f"<section><h2>timeline</h2>{step_chart(s.get('steps', []))}</section>"
        f"<section><h2>models</h2><div class=grid>{''.join(models) or '<p class=empty>none</p>'}</div></section>"
        "<section><h2>decisions</h2>"
        + _table(("model", "decision", "candidate", "champion", "version", "reason"), decisions,
                 "no decision yet") + "</section>"
        + coalescing(s)
        + (f"<p class=error>{esc(s['error'])}</p>" if s.get("error") else ""))


def coalescing(s: dict[str, Any]) -> str:
    """A coalesced run's covering run, and the runs a run covers (bursts coalesce)."""
    def link(run_id: object) -> str:
        return f"<a href='/runs/{quote(str(run_id))}'>{esc(run_id)}</a>"

    out = ""
    if s.get("covered_by"):
        out += f"<p id=covered-by>covered by run {link(s['covered_by'])}</p>"
    covers = s.get("covers") or []
    if covers:
        rows = [_cells(link(c.get("run_id")), esc(c.get("event_id")), esc(c.get("time")),
                       esc(str(c.get("digest") or "")[:12])) for c in covers]
        out += ("<section id=covers><h2>covers</h2>"
                + _table(("run", "event", "time", "digest"), rows, "none") + "</section>")
    return out


# models and events ------------------------------------------------------------------------------
def _ticks(versions: list[int], at: Callable[[float], float], gap: float = 40) -> list[int]:
    """The versions to label, placed at ``at(version)``: the first and last always, and each
    other one that stands at least ``gap`` pixels from the labels on either side of it (the
    spacing is by where the labels are drawn, however unevenly the versions are numbered)."""
    if len(versions) <= 2:
        return versions
    chosen, last = [versions[0]], at(versions[-1])
    for version in versions[1:-1]:
        if at(version) - at(chosen[-1]) >= gap and last - at(version) >= gap:
            chosen.append(version)
    return [*chosen, versions[-1]]


def history_chart(champions: list[dict[str, Any]], width: int = 760, height: int = 180) -> str:
    """Each champion's test accuracy by version; the axis names only versions there are."""
    pts = sorted((c["version"], c["accuracy"]) for c in champions
                 if c.get("accuracy") is not None)
    if not pts:
        return "<p class=empty>no scored champion yet</p>"
    v0, v1 = pts[0][0], pts[-1][0]
    lo, hi = min(a for _, a in pts), max(a for _, a in pts)
    lo, hi = (lo - 0.01, hi + 0.01) if hi - lo < 0.02 else (lo, hi)
    left, room = 50, width - 80

    def x(v: float) -> float:  # one version alone stands in the middle
        return left + (room / 2 if v1 == v0 else (v - v0) / (v1 - v0) * room)

    def y(a: float) -> float:
        return height - 35 - (a - lo) / (hi - lo) * (height - 55)

    line = " ".join(f"{x(v):.1f},{y(a):.1f}" for v, a in pts)
    dots = "".join(f"<circle cx={x(v):.1f} cy={y(a):.1f} r=4><title>version {v}: "
                   f"{a:.4f}</title></circle>" for v, a in pts)
    ticks = "".join(f"<text class=tick x={x(v):.1f} y={height - 18} text-anchor=middle>{v}</text>"
                    for v in _ticks(sorted({v for v, _ in pts}), x))
    return (f"<svg class=history viewBox='0 0 {width} {height}' width={width} height={height} "
            f"role=img aria-label='champion accuracy by version'><polyline points='{line}'/>{dots}"
            f"<text x=4 y=14>{hi:.4f}</text><text x=4 y={height - 38}>{lo:.4f}</text>{ticks}"
            f"<text x={left + room / 2:.1f} y={height - 2} text-anchor=middle>version</text></svg>")


def decision_rows(decisions: list[dict[str, Any]], lead: Callable[[dict[str, Any]], tuple[str, ...]],
                  folded: bool = False) -> list[str]:
    """Each decision as a row (``lead``'s cells) and, beneath it, every figure and rule it
    was made on; ``folded``: behind a summary naming each rule passed or failed (kept open
    across the page's refreshes)."""
    rows = []
    for d in decisions:
        cells = lead(d)
        figures = decision_figures(d)
        if folded:
            anchor = esc(f"figures-{d.get('run_id')}-{d.get('model_type')}-{d.get('at')}")
            figures = (f"<details id='{anchor}'><summary>figures and rules {rules_line(d)}"
                       f"</summary>{figures}</details>")
        rows.append(_cells(*cells) + f"<tr class=figures-row><td colspan={len(cells)}>"
                    f"{figures}</td></tr>")
    return rows


def versions_table(champions: list[dict[str, Any]]) -> str:
    """Every version recorded, newest first, each linked to its lineage."""
    rows = [_cells(lineage_link(c["version"]), esc(c.get("model_type")), _score(c.get("accuracy")),
                   f"<a href='/runs/{quote(str(c.get('run_id')))}'>{esc(c.get('run_id'))}</a>",
                   f"<code>{esc(str(c.get('dataset_digest') or '')[:16])}</code>")
            for c in sorted(champions, key=lambda c: -int(c["version"]))]
    return ("<section><h2>versions</h2>" + _table(
        ("version (its lineage)", "model", "test accuracy", "run", "dataset"), rows,
        "no version served yet") + "</section>")


def models_page(champion_html: str, champions: list[dict[str, Any]],
                decisions: list[dict[str, Any]]) -> str:
    rows = decision_rows(list(reversed(decisions)), lambda d: (
        esc(_when(d.get("at"))), f"<span class='tag {_kind(d.get('type'))}'>{esc(d.get('type'))}</span>",
        f"<a href='/runs/{quote(str(d.get('run_id')))}'>{esc(d.get('run_id'))}</a>",
        esc(d.get("model_type")), _score(d.get("candidate_accuracy")),
        _score(d.get("champion_accuracy")), lineage_link(d.get("version")),
        esc(d.get("reason"))), folded=True)
    return (f"<h1>models</h1>{champion_html}<section><h2>champion history</h2>"
            f"{history_chart(champions)}</section>{versions_table(champions)}"
            "<section><h2>promotions, rejections and rollbacks</h2>"
            + _table(("when", "decision", "run", "model", "candidate", "champion", "version",
                      "reason"), rows, "no decision yet") + "</section>")


def events_page(events: list[dict[str, Any]], dead: list[dict[str, Any]]) -> str:
    rows = [_cells(esc(_when(e["at"])), esc(e["type"]), f"<span class=source>{esc(e.get('source', '-'))}</span>",
                   f"<code>{esc(e.get('id'))}</code>",
                   "<span class='tag miss'>duplicate</span>" if e.get("duplicate")
                   else "<span class='tag hit'>accepted</span>",
                   esc(e.get("model_type") or e.get("trigger") or ""),
                   esc(e.get("reason") or "")) for e in events]
    letters = [_cells(esc(_when(d["died_at"])), esc(d["origin"]), esc(d["type"]),
                      f"<code>{esc(d['event_id'])}</code>", esc(d["source"]), esc(d["reason"]),
                      f"<button class=replay data-stream='{esc(d['stream'])}' "
                      f"data-id='{esc(d['entry_id'])}'>replay</button>") for d in dead]
    return ("<h1>events</h1><section><h2>received and sent</h2>"
            + _table(("when", "type", "source", "id", "", "about", "reason"), rows, "no events yet")
            + "</section><section><h2>dead letters</h2>"
            + _table(("died", "from", "type", "id", "source", "reason", ""), letters,
                     "no dead letters") + "</section>")


# forms (outside the live part, so a refresh never wipes what someone is typing) ---------------
def key_form() -> str:
    return ("<section class=actions><label>API key <input id=api-key type=password "
            "autocomplete=off placeholder='needed to change anything'></label>"
            "<p id=action-result role=status></p></section>")


def rollback_form(offered: bool) -> str:
    if not offered:
        return key_form()
    return ("<section class=actions><h2>rollback</h2><p>Serve the previous champion again, as "
            "a new version.</p><label>API key <input id=api-key type=password autocomplete=off "
            "placeholder='RETRAIN_API_KEYS'></label> <button id=rollback>roll back</button>"
            "<p id=action-result role=status></p></section>")


CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


def try_form() -> str:
    names = "".join(f"<li data-class={i}>{esc(n)}</li>" for i, n in enumerate(CLASSES))
    return ("<section class=actions id=try><p>Upload an image, or draw one (white on black, as "
            "Fashion-MNIST is), and see the served model's class probabilities.</p>"
            "<input id=image type=file accept='image/png,image/jpeg'>"
            "<canvas id=pad width=224 height=224 aria-label='drawing pad'></canvas>"
            "<button id=clear>clear</button> <button id=predict>predict</button>"
            f"<ol id=classes hidden>{names}</ol><div id=prediction role=status></div></section>")


def login(problem: str) -> str:
    return (f"<h1>a key is needed</h1><p class=error>{esc(problem)}</p>"
            "<form method=post action=/login><label>API key <input name=key type=password "
            "autocomplete=off></label> <button>read the dashboard</button></form>")
