"""What the dashboard refuses, and its one table from those refusals to HTTP statuses.

The API answers each as JSON (``core.http.json_errors``); a page answers the same refusal as
HTML: the login form for a missing or wrong key, a short "not here" page for the rest.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from core.auth import KeyRefusedError
from core.errors import RetrainError
from core.http import BodyTooLargeError, json_errors
from dashboard import pages
from services.selector.errors import SelectorError
from workflows.lineage import LineageNotFoundError


class DashboardError(RetrainError):
    """Something the dashboard cannot do as asked."""


class RunNotFoundError(DashboardError):
    def __init__(self, run_id: str, kept_days: int) -> None:
        super().__init__(f"no run {run_id!r} (runs are kept {kept_days} days)")
        self.run_id = run_id


class NotOfferedError(DashboardError):
    """What this dashboard was built without (a rollback, a model server)."""


class BadRequestError(DashboardError):
    """A request body that is not what the endpoint reads."""


class ModelServerUnreachableError(DashboardError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the model server did not answer: {reason}")
        self.url = url


ERRORS: dict[type[Exception], int] = {
    KeyRefusedError: 401,  # or its own 403 when no key is configured
    BadRequestError: 400,
    RunNotFoundError: 404,
    LineageNotFoundError: 404,  # a version the champion records do not hold
    SelectorError: 409,  # a rollback the selector refused
    BodyTooLargeError: 413,
    NotOfferedError: 501,
    ModelServerUnreachableError: 502,
}


def is_page(request: Request) -> bool:
    """Whether ``request`` is a person's page (answered as HTML) rather than the API."""
    return not request.url.path.startswith("/api/")


def error_page(exc: Exception, status: int) -> HTMLResponse:
    """A refusal as a page: the login form when a key is missing or wrong."""
    if isinstance(exc, KeyRefusedError):
        return HTMLResponse(pages.layout("a key is needed", pages.login(str(exc))),
                            status_code=status, headers=exc.headers)
    body = f"<h1>not here</h1><p class=error>{pages.esc(exc)}</p>"
    return HTMLResponse(pages.layout("retrain", body), status_code=status)


def install(app: FastAPI) -> None:
    """Answer ``ERRORS`` on ``app``: as JSON for the API, as a page for a page."""
    json_errors(app, ERRORS)
    for kind, status in ERRORS.items():
        app.add_exception_handler(kind, _page_or(app.exception_handlers[kind], status))


def _page_or(as_json: Any, status: int) -> Any:
    async def answer(request: Request, exc: Exception) -> Any:
        if is_page(request):
            return error_page(exc, getattr(exc, "status", status))
        return await as_json(request, exc)
    return answer
