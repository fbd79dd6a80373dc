"""Durations as people write and read them: ``30s``, ``15m``, ``2h``, ``1d``; ``12 min ago``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """Seconds in ``text`` (a number and one of s, m, h, d), or None when it is not one."""
    match = _DURATION.match(text)
    return float(match[1]) * _UNITS[match[2]] if match else None


def ago(seconds: float, short: bool = False) -> str:
    """``12 min ago`` (or ``12m`` when ``short``)."""
    if seconds < 90:
        value, unit = f"{seconds:.0f}", "s"
    elif seconds < 5400:
        value, unit = f"{seconds / 60:.0f}", "m" if short else "min"
    else:
        value, unit = f"{seconds / 3600:.1f}", "h"
    return f"{value}{unit}" if short else f"{value} {unit} ago"
