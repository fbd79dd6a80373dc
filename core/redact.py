"""Secrets never reach logs, errors, events or status output.

``redact`` masks the user information of every URL in a text (``redis://:pw@host``,
``https://token@github.com/...``, ``https://user:token@...``) and every secret registered
with ``register`` (API keys, webhook secrets, tokens from the settings). ``RedactingFilter``
applies it to every log record a handler emits, third-party ones included.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_secrets: set[str] = set()
_lock = threading.Lock()


def register(*secrets: str | None) -> None:
    """Mask these values wherever they appear from now on (short ones would mask words)."""
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= 6)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"


def redact(text: str) -> str:
    text = _USERINFO.sub(_mask_userinfo, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) with ``redact`` before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a ``RedactingFilter`` on every handler of ``logger`` (default: the root)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
