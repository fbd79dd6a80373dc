"""The root of every error retrain raises on purpose.

Each package has its own base (``EventError``, ``IngestionError``, ...) deriving from
``RetrainError``; the CLI turns any of them into one clear line and a non-zero exit.
"""

from __future__ import annotations


class RetrainError(Exception):
    """An expected failure with a message meant for the user."""

    exit_code = 1


class ConfigurationError(RetrainError):
    """A setting is missing or has a value retrain cannot use."""

    exit_code = 2


class RedisUnavailableError(RetrainError):
    """The configured Redis server cannot be reached."""

    def __init__(self, url: str, reason: str) -> None:
        from core.redact import redact

        super().__init__(redact(f"cannot reach Redis at {url}: {reason}"))
        self.url = redact(url)
        self.reason = redact(reason)


class PortInUseError(RetrainError):
    """A service was asked to listen on a port another process holds."""

    def __init__(self, host: str, port: int, service: str) -> None:
        super().__init__(
            f"{service}: port {port} on {host} is already in use "
            f"(stop the other process or choose another port)"
        )
        self.host = host
        self.port = port
