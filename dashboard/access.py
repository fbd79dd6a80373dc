"""Who may read and change what, through ``core.auth``'s one check.

Reading needs nothing unless the dashboard requires a key (``RETRAIN_UI_REQUIRE_KEY=1``);
then ``Authorization: Bearer KEY`` or the login cookie will do (``POST /login`` sets it from
a form). Changing anything always needs a bearer key (``core.auth.ApiKeyAlways``): 403 when
no key is configured, 401 when it is missing or wrong.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from core.auth import keys_of
from core.http import bearer, read_body
from dashboard.state import Ctx

COOKIE = "retrain_key"  # the key a reader typed in, when a key is required for reading
MAX_FORM_BYTES = 4096


async def read_key(request: Request, dashboard: Ctx) -> str | None:
    """The reader's key, checked when the dashboard requires one (None when it does not);
    async only so that it runs on the event loop, not in a worker thread (it never waits)."""
    if not dashboard.require_key:
        return None
    presented = bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE)
    return keys_of(request).check(presented, always=True)


READING = [Depends(read_key)]  # a router's dependencies: everything on it is read

login = APIRouter()


@login.post("/login")
async def enter(request: Request) -> RedirectResponse:
    """The reader's key (a form's ``key``), kept in an HttpOnly cookie for this site."""
    form = parse_qs((await read_body(request, MAX_FORM_BYTES)).decode(errors="replace"))
    key = keys_of(request).check((form.get("key") or [""])[0], always=True)
    answer = RedirectResponse("/", status_code=303)
    answer.set_cookie(COOKIE, key or "", httponly=True, samesite="strict")
    return answer
