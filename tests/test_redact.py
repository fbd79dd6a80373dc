"""Secrets are masked in every text that leaves a process: URLs' user information, and the
secrets the settings configure, in log records (tracebacks included) and errors."""

import logging

from core import redact


def test_urls_lose_their_passwords_and_tokens():
    text = ("redis://:pw1234567@redis:6379/0 and rediss://app:pw7654321@h/1, "
            "git fetch https://ghp_abcdefghij@github.com/o/r.git; "
            "https://x-access-token:ghs_token123@github.com/o/r; plain https://github.com/o/r")
    cleaned = redact.redact(text)
    for secret in ("pw1234567", "pw7654321", "ghp_abcdefghij", "ghs_token123"):
        assert secret not in cleaned
    assert "redis://:***@redis:6379/0" in cleaned and "rediss://app:***@h/1" in cleaned
    assert "https://***@github.com/o/r.git" in cleaned
    assert "https://x-access-token:***@github.com/o/r" in cleaned
    assert "plain https://github.com/o/r" in cleaned


def test_registered_secrets_are_masked_in_log_lines_and_tracebacks(caplog):
    redact.register("webhook-secret-xyz", "abc")  # too short to mask: would mask words
    logger = logging.getLogger("tests.redact")
    handler = logging.StreamHandler()
    records = []
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(redact.RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.error("signature %s did not match at %s", "webhook-secret-xyz", "redis://:pw9876543@h")
        try:
            raise ValueError("bad token webhook-secret-xyz")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = records
    assert first.getMessage() == "signature *** did not match at redis://:***@h"
    assert "webhook-secret-xyz" not in (second.exc_text or "") and "bad token ***" in second.exc_text
    assert redact.redact("abc stays") == "abc stays"
