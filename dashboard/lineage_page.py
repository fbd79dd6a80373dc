"""The lineage page (``/lineage/<version>``): why a version is served, one card per link
(``workflows.lineage``): the decision with its figures and rules, what the live guard made of
the version once served, the model, its training, the dataset, the validation report, the run
(and the coalesced runs its data covers) and the events that caused it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from dashboard.html import cells, esc, score, table, tag, when
from dashboard.judgement import decision_figures, live_figures, validation_report
from workflows.lineage import origin_text


def lineage_link(version: object, text: str | None = None) -> str:
    """A link to ``version``'s lineage (nothing when there is no version)."""
    if version is None or version == "":
        return ""
    return f"<a class=lineage href='/lineage/{quote(str(version))}'>{esc(text or version)}</a>"


def _run_link(run_id: object) -> str:
    return f"<a href='/runs/{quote(str(run_id))}'>{esc(run_id)}</a>" if run_id else "-"


def _facts(pairs: list[tuple[str, str]]) -> str:
    """Named values as a two-column list (values already escaped)."""
    return "<dl class=facts>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _card(name: str, body: str) -> str:
    return f"<section class=card id=lineage-{name}><h2>{esc(name)}</h2>{body}</section>"


def _code(value: object) -> str:
    return f"<code>{esc(value)}</code>" if value else "-"


def lineage_page(found: dict[str, Any]) -> str:
    version, model = found["version"], found["model"]
    serving = ("served now" if model and model.get("serving") else "served before, replaced since"
               if model else "no version")
    return (f"<h1>lineage of version <span id=lineage-version>{esc(version)}</span> · "
            f"{esc(serving)}</h1><p>{esc(found['decision'].get('summary'))}</p>"
            + _decision(found["decision"]) + _guard(found.get("guard")) + _model(model) + _training(found["training"])
            + _dataset(found["dataset"])
            + validation_report(found["validation"], found["run"].get("status"))
            + _run(found["run"]) + _events(found["events"]))


def _decision(d: dict[str, Any]) -> str:
    if not d.get("type"):
        return _card("decision", f"<p>{esc(d.get('summary'))}</p>")
    facts = _facts([
        ("decision", tag(d["type"], str(d["type"]).rsplit(".", 1)[-1])),
        ("when", esc(when(d.get("at")))), ("variant", esc(d.get("model_type"))),
        ("candidate", score(d.get("candidate_accuracy"))),
        ("champion", (f"{score(d.get('champion_accuracy'))} (version "
                      f"{lineage_link(d.get('champion_version'))})"
                      if d.get("champion_version") is not None else "none: the first model")),
        ("reason", esc(d.get("reason")))])
    others = [cells(tag(o.get("type"), str(o.get("type")).rsplit(".", 1)[-1]),
                    esc(o.get("model_type")), score(o.get("candidate_accuracy")),
                    lineage_link(o.get("version")), esc(o.get("reason")))
              for o in d.get("others") or []]
    return _card("decision", facts + decision_figures(d) + (
        "<h3>the run's other decisions</h3>" + table(
            ("decision", "model", "candidate", "version", "reason"), others, "")
        if others else ""))


def _guard(g: dict[str, Any] | None) -> str:
    """The live guard's outcome: watching, settled or rolled back with the figures of the
    version's window beside the previous version's, superseded; or not watched."""
    if g is None:
        return ""
    if not g.get("state"):
        return _card("guard", f"<p class=empty id=guard-state>{esc(g.get('summary'))}</p>")
    state = str(g["state"])
    facts = [("state", f"<span id=guard-state>{tag(state)}</span>"),
             ("since" if state == "watching" else "when", esc(when(g.get("at")))),
             ("what it made of it", esc(g.get("summary")))]
    if state == "rolledback":
        replaced = (f"version <span id=guard-replaced-by>"
                    f"{lineage_link(g.get('restored_version'))}</span> "
                    f"(version {lineage_link(g.get('previous_version'))}'s model)")
        facts += [("rule", f"<b id=guard-rule>{esc(g.get('rule'))}</b>"),
                  ("reason", esc(g.get("reason"))), ("replaced by", replaced)]
        approved = g.get("approved")
        if isinstance(approved, dict):
            facts.append(("approved since", esc(f"by {approved.get('by')} at "
                                                f"{when(approved.get('at'))}")))
    elif state == "superseded":
        facts.append(("replaced by", f"version {lineage_link(g.get('by'))}"))
    figures = live_figures(g) if state in ("settled", "rolledback") else ""
    return _card("guard", _facts(facts) + figures)


def _model(m: dict[str, Any] | None) -> str:
    if m is None:
        return _card("model", "<p class=empty>nothing was served from this run</p>")
    matches = {True: tag("the trained model's files", "passed"),
               False: tag("not the trained model's files", "failed"),
               None: tag("not compared", "off")}[m.get("digest_matches")]
    return _card("model", _facts([
        ("variant", esc(m.get("variant"))),
        ("served from", _code(m.get("location")) + ("" if m.get("present") else " (gone)")),
        ("files digest", f"{_code(m.get('files_digest'))} {matches}"),
        ("test accuracy", score(m.get("accuracy"))),
        ("trained model", _code(m.get("trained_model"))),
        ("dataset", _code(m.get("dataset_digest")))]))


def _training(t: dict[str, Any]) -> str:
    if "variants" in t:
        return "".join(_training(v) for v in t["variants"].values()) or _card(
            "training", "<p class=empty>no training</p>")
    if t.get("status") is None:
        return _card("training", f"<p>{esc(t.get('variant'))}: not trained</p>")
    how = (tag("reused from the training cache", "cached") + f" trained by run "
           f"{_run_link(t.get('trained_by'))}" if t.get("cached") else tag("trained", "trained")
           + f" by run {_run_link(t.get('trained_by'))}")
    warm = t.get("warm_start")
    started = ("from scratch" if warm is None else
               f"from version {lineage_link(warm['from_version'])}" if warm.get("from_version")
               else esc(warm.get("note")))
    params = ", ".join(f"{k}={v}" for k, v in (t.get("parameters") or {}).items())
    seconds = t.get("seconds")
    return _card("training", _facts([
        ("variant", esc(t.get("variant"))), ("how", how),
        ("cache decision", esc(t.get("cache_reason"))),
        ("parameters", _code(params)), ("code version", _code(t.get("code_version"))),
        ("took", esc(f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "-")
         + f", {esc(t.get('steps'))} steps, ended {esc(when(t.get('trained_at')))}"),
        ("validation accuracy", score(t.get("val_accuracy"))),
        ("started", started)]))


def _dataset(d: dict[str, Any]) -> str:
    units = [cells(tag(kind, "miss" if kind == "ingested" else "hit"), esc(u.get("split")),
                   esc(u.get("source")), _code(str(u.get("id"))[:16]))
             for kind in ("ingested", "reused") for u in d["units"][kind]]
    records = ", ".join(f"{k} {v}" for k, v in (d.get("records") or {}).items())
    return _card("dataset", _facts([
        ("digest", _code(d.get("digest"))), ("before", _code(d.get("previous_digest"))),
        ("ingested at", _code(d.get("uri")) + ("" if d.get("present") else " (gone)")),
        ("records", esc(records or "-")),
        ("ingestion", esc((d.get("cache") or {}).get("reason")))])
        + table(("unit", "split", "made from", "id"), units, "no units recorded"))


def _run(r: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (r.get("parameters") or {}).items())
    covers = [cells(_run_link(c.get("run_id")), _code(c.get("event_id")),
                    esc(when(c.get("time"))), _code(str(c.get("digest") or "")[:16]))
              for c in r.get("covers") or []]
    return _card("run", _facts([
        ("run", _run_link(r.get("run_id"))), ("trigger", esc(r.get("trigger"))),
        ("status", tag(r.get("status"))), ("started", esc(when(r.get("started_at")))),
        ("parameters", _code(params))])
        + ("<h3 id=covers>the coalesced runs its data covers</h3>" + table(
            ("run", "event", "when", "data digest"), covers, "") if covers else ""))


def _events(events: list[dict[str, Any]]) -> str:
    rows = []
    for e in events:
        files = e.get("files") or {}
        changed = ", ".join(f"{len(files.get(k) or [])} {k}" for k in ("added", "changed", "removed"))
        said = esc(e.get("note")) if e.get("type") is None else esc(origin_text(e.get("origin")))
        rows.append(cells(esc(e.get("role")), _run_link(e.get("run_id")), esc(e.get("type") or "-"),
                          _code(e.get("id")), f"<span class=source>{esc(e.get('source'))}</span>",
                          f"<span class=origin>{said}</span>", esc(changed if files else "")))
    return _card("events", table(("role", "run", "type", "id", "source", "what the source said",
                                  "files"), rows, "no event recorded"))
