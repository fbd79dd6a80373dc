"""When a cached step result may be reused: the ingestion and training caches' policy.

``exact`` (the same content key), ``max-age=DURATION`` (and not older than that) or
``min-change=FRACTION`` (the ingestion's: reuse the latest ingestion while the record count
changed by less than that); the training cache takes ``exact``, ``max-age=…`` or ``off``
(``TRAINING``). The event payloads check the same grammar (``events.payloads``).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.durations import parse_duration
from core.errors import ConfigurationError

INGESTION = ("exact", "max-age", "min-change")  # the ingestion cache's policies (the default)
TRAINING = ("exact", "max-age", "off")  # the training cache's policies (Policy.parse kinds)
_GRAMMAR = {"exact": "", "off": "", "max-age": "=DURATION", "min-change": "=FRACTION"}


class CachePolicyError(ConfigurationError):
    """A cache policy that cannot be parsed: a usage error (exit 2, as every configuration
    error)."""


@dataclass(frozen=True)
class Policy:
    """``exact``, ``max-age=DURATION`` or ``min-change=FRACTION`` (ingestion); ``exact``,
    ``max-age=DURATION`` or ``off`` (training: ``TRAINING``)."""

    kind: str = "exact"
    max_age: float | None = None
    min_change: float | None = None

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...] = INGESTION) -> Policy:
        text = text.strip()
        name, _, value = text.partition("=")
        if name not in kinds or (name in ("exact", "off")) != ("=" not in text):
            forms = [kind + _GRAMMAR[kind] for kind in kinds]
            expected = ", ".join(forms[:-1]) + " or " + forms[-1]
            raise CachePolicyError(f"unknown cache policy {text!r} (expected {expected})")
        if name in ("exact", "off"):
            return cls(name)
        if name == "max-age":
            seconds = parse_duration(value)
            if seconds is None:
                raise CachePolicyError(
                    f"cache policy {text!r}: max-age needs a duration like 30s, 15m, 2h or 1d"
                )
            return cls("max-age", max_age=seconds)
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not 0 < fraction < 1:
            raise CachePolicyError(
                f"cache policy {text!r}: min-change needs a fraction between 0 and 1"
            )
        return cls("min-change", min_change=fraction)

    def __str__(self) -> str:
        if self.kind == "max-age":
            return f"max-age={self.max_age:g}s"
        if self.kind == "min-change":
            return f"min-change={self.min_change:g}"
        return self.kind
