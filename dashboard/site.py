"""The dashboard's pages (``/``, ``/runs/<id>``, ``/models``, ``/lineage/<version>``,
``/events``, ``/try``): each renders the same data the API serves. A page asks for its live
part again every 2 s (``X-Fragment: 1``) and gets only that part."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dashboard import data, pages
from dashboard.access import READING
from dashboard.lineage_page import lineage_page
from dashboard.state import Ctx

router = APIRouter(dependencies=READING, default_response_class=HTMLResponse)
Offset = Annotated[int, Query(ge=0)]


def _page(request: Request, title: str, body: str, actions: str = "") -> HTMLResponse:
    if request.headers.get("x-fragment") == "1":
        return HTMLResponse(body)
    return HTMLResponse(pages.layout(title, body, actions))


@router.get("/")
def index(request: Request, dashboard: Ctx, offset: Offset = 0) -> HTMLResponse:
    view = data.overview(dashboard, offset, data.PAGE)
    body = (pages.champion_card(view["champion"], view["since"], view["replaced"])
            + pages.runs_table(view["runs"]) + pages.sources_table(view["sources"]))
    return _page(request, "overview", body)


@router.get("/runs/{run_id}")
def run(request: Request, dashboard: Ctx, run_id: str) -> HTMLResponse:
    return _page(request, f"run {run_id}", pages.run_page(data.run(dashboard, run_id)))


@router.get("/models")
def models(request: Request, dashboard: Ctx) -> HTMLResponse:
    view = data.champions(dashboard.champions)
    served = [view["champion"]] if view["champion"] else []
    body = pages.models_page(
        pages.champion_card(view["champion"], view["since"], view["replaced"]),
        [*view["history"], *served], view["decisions"])
    return _page(request, "models", body, pages.rollback_form(dashboard.rollback is not None))


@router.get("/lineage/{version}")
def lineage(request: Request, dashboard: Ctx, version: int) -> HTMLResponse:
    return _page(request, f"lineage of version {version}",
                 lineage_page(data.lineage(dashboard, version)))


@router.get("/events")
def events(request: Request, dashboard: Ctx) -> HTMLResponse:
    view = data.events(dashboard.client)
    return _page(request, "events", pages.events_page(view["events"], view["dead_letters"]),
                 pages.key_form())


@router.get("/try")
def try_it(request: Request) -> HTMLResponse:
    return _page(request, "try it", "<h1>try it</h1>", pages.try_form())
