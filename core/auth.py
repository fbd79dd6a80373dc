"""API keys: the one check every service makes before it changes or tells anything.

A service is built with its ``ApiKeys`` (``RETRAIN_API_KEYS``) and calls the same check from
every door: FastAPI routes through the ``ApiKey`` dependency (``Annotated[..., Depends]``),
the raw inference routes and gRPC, which answer before FastAPI for speed, by calling
``ApiKeys.check`` themselves. A refusal is a ``KeyRefusedError`` carrying its HTTP status,
which each service's error table answers. ``identity`` names the key that authenticated a
request without showing it (who approved a blocked run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from core.errors import RetrainError
from core.http import bearer, secret_matches

SETTING = "RETRAIN_API_KEYS"


class KeyRefusedError(RetrainError):
    """A request without a key the service accepts: 401 (no key, or a wrong one), or 403 (the
    request needs a key and the service has none configured)."""

    def __init__(self, status: int, message: str, *, presented: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.presented = presented  # a key was sent, and it is not ours

    @property
    def headers(self) -> dict[str, str]:
        """RFC 6750 (section 3): a 401 names the scheme the client should use and, when a key
        was sent and refused, says it is invalid."""
        if self.status != 401:
            return {}
        return {"WWW-Authenticate": 'Bearer error="invalid_token"' if self.presented
                else "Bearer"}


@dataclass(frozen=True)
class ApiKeys:
    """The keys a service accepts; none configured means the service is open."""

    keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, keys: ApiKeys | Iterable[str]) -> ApiKeys:
        """``keys`` as ``ApiKeys`` (a service may be given either)."""
        return keys if isinstance(keys, ApiKeys) else cls(tuple(keys))

    def identify(self, authorization: str | None) -> str | None:
        """The key an ``Authorization: Bearer KEY`` header presents, if it is one of ours."""
        return secret_matches(bearer(authorization), self.keys)

    def check(self, presented: str | None, *, always: bool = False) -> str | None:
        """The key ``presented`` (a bearer token, or a form's or cookie's value) if it is one of
        ours; None when no key is configured and ``always`` is False (an open service).
        Raises ``KeyRefusedError`` otherwise."""
        if not self.keys:
            if always:
                raise KeyRefusedError(403, f"this needs an API key, and none is configured "
                                           f"({SETTING})")
            return None
        if not presented:
            raise KeyRefusedError(401, f"this needs an API key (one of {SETTING}) as "
                                       f"Authorization: Bearer KEY")
        matched = secret_matches(presented, self.keys)
        if matched is None:
            raise KeyRefusedError(401, f"the API key is not one of {SETTING}", presented=True)
        return matched

    def optional(self, authorization: str | None) -> str | None:
        """For a service anyone may call, where a key only earns its own rate: None without
        an ``Authorization`` header; the key when it presents one of ours; else refused (401),
        keys configured or not, so a mistyped key is not served silently as anonymous."""
        if not authorization:
            return None
        token = bearer(authorization)
        matched = secret_matches(token, self.keys)
        if matched is None:
            raise KeyRefusedError(401, f"the API key is not one of {SETTING}",
                                  presented=token is not None)
        return matched

    def check_header(self, authorization: str | None, *, always: bool = False) -> str | None:
        """``check`` on the token of an ``Authorization: Bearer KEY`` header."""
        return self.check(bearer(authorization), always=always)


ANONYMOUS = "anonymous"  # who sent a request to a service with no key configured (open)


def identity(key: str | None) -> str:
    """Who a request came from, as far as its key tells: ``key:`` and the first 12 hex
    digits of the key's SHA-256 (the key itself is never shown, logged or stored), or
    ``anonymous`` when no key authenticated it (an open service). Whoever holds the keys
    can tell which one it is: ``identity(KEY)``."""
    if key is None:
        return ANONYMOUS
    return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def install(app: Any, keys: ApiKeys) -> None:
    """Give ``app`` (a FastAPI or Starlette app) the keys its ``ApiKey`` routes check."""
    app.state.api_keys = keys


def keys_of(request: Request) -> ApiKeys:
    keys = getattr(request.app.state, "api_keys", None)
    if not isinstance(keys, ApiKeys):
        raise RuntimeError("core.auth.install was not called on this app")
    return keys


async def require_key(request: Request) -> str | None:
    """The FastAPI dependency: the request's bearer key, checked (None on an open service).
    Async, so FastAPI runs it on the event loop: a check that never waits takes no thread."""
    return keys_of(request).check_header(request.headers.get("authorization"))


async def require_key_always(request: Request) -> str | None:
    """As ``require_key``, for what must never be open (changing the served model)."""
    return keys_of(request).check_header(request.headers.get("authorization"), always=True)


ApiKey = Annotated[str | None, Depends(require_key)]
ApiKeyAlways = Annotated[str | None, Depends(require_key_always)]
