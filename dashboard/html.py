"""The few pieces every page is built from: escaping (every value that came from outside goes
through ``esc``), times, scores, tables and tags."""

from __future__ import annotations

import time
from html import escape


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(at: float | None) -> str:
    if not at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(headers: tuple[str, ...], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def cells(*values: str) -> str:
    return "<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"


def kind(event_type: object) -> str:
    """The CSS class of a decision's type (``model.rejected`` → ``rejected``)."""
    return esc(str(event_type).rsplit(".", 1)[-1])


def tag(text: object, css: object = None) -> str:
    """A small coloured label; ``css`` (default: the text) picks its colour."""
    return f"<span class='tag {esc(css if css is not None else text)}'>{esc(text)}</span>"
