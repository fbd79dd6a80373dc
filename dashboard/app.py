"""``retrain ui``: the pipeline's dashboard, served from Redis and the model server alone.

Pages (``/``, ``/runs/<id>``, ``/models``, ``/events``, ``/try``) are rendered here; each
reads the same JSON the API serves (``/api/...``). A page asks for its live part again every
2 s (``X-Fragment: 1``), so it updates without a reload. Reading needs no key unless
``RETRAIN_UI_REQUIRE_KEY=1``; changing anything (rollback, replaying a dead letter) always
needs one of ``RETRAIN_API_KEYS``. No CDN: the page's CSS and JavaScript are small files
written here (``dashboard/static``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from core.http import BodyTooLargeError, bearer, read_body, secret_matches
from core.settings import MODEL_NAME
from services.selector.champion import ChampionStore
from dashboard import data, pages

STATIC = Path(__file__).parent / "static"
MAX_IMAGE_BYTES = 1 << 20  # an uploaded or drawn image for "try it"
COOKIE = "retrain_key"  # the key a reader typed in, when RETRAIN_UI_REQUIRE_KEY=1
HISTORY, DECISIONS = 200, 200  # the newest champions and decisions a page shows


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (before or while reading it)."""
    try:
        return await read_body(request, limit)
    except BodyTooLargeError as exc:
        raise _Refused(413, str(exc)) from None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(client: redis.Redis, model_repo: str, *, api_keys: tuple[str, ...] = (),
               require_key: bool = False, serve_url: str | None = None,
               rollback: Callable[[str], dict[str, Any]] | None = None) -> FastAPI:
    """The dashboard on ``client``'s Redis for the champion of ``model_repo``; ``serve_url``:
    the model server "try it" asks; ``rollback``: how a rollback is done here, returning the
    decision (None: it is not offered; a ``SelectorError`` is answered 409)."""
    app = FastAPI(title="retrain ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    store = ChampionStore(client, model_repo)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Any:
        if request.method == "GET" and not request.url.path.startswith("/api/"):
            body = (pages.login(str(exc)) if exc.status in (401, 403)
                    else f"<h1>not here</h1><p class=error>{pages.esc(exc)}</p>")
            return HTMLResponse(pages.layout("retrain", body), status_code=exc.status)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.post("/login")
    async def login(request: Request) -> Any:
        """The reader's key (a form's ``key``), kept in an HttpOnly cookie for this site."""
        from urllib.parse import parse_qs

        key = (parse_qs((await _body(request, 4096)).decode(errors="replace")).get("key")
               or [""])[0]
        if not api_keys or not secret_matches(key, api_keys):
            return HTMLResponse(pages.layout("a key is needed", pages.login(
                "that is not one of RETRAIN_API_KEYS")), status_code=401)
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return answer

    def check_key(request: Request, changing: bool) -> None:
        """Reading needs nothing unless ``require_key``; changing anything always needs a key
        (sent as ``Authorization: Bearer``; for reading, the page's login cookie will do)."""
        if not changing and not require_key:
            return
        if not api_keys:
            raise _Refused(403, "changing anything here needs an API key, and none is "
                                "configured (RETRAIN_API_KEYS)")
        given = bearer(request.headers.get("authorization"))
        if not given and not changing:
            given = request.cookies.get(COOKIE)
        if not given:
            raise _Refused(401, "this needs an API key (one of RETRAIN_API_KEYS) as "
                                "Authorization: Bearer KEY")
        if not secret_matches(given, api_keys):
            raise _Refused(401, "the API key is not one of RETRAIN_API_KEYS")

    def champion_view() -> dict[str, Any]:
        champion = store.get()
        history = store.history()[-HISTORY:]
        decisions = store.decisions(last=DECISIONS)
        since = None
        if champion is not None:
            for d in reversed(decisions):
                if d.get("version") == champion.version and d.get("type") in (
                        "model.promoted", "rollback"):
                    since = d.get("at")
                    break
        return {"champion": champion.__dict__ if champion else None, "since": since,
                "replaced": history[-1].__dict__ if history else None,
                "history": [c.__dict__ for c in history], "decisions": decisions}

    def sources() -> list[dict[str, Any]]:
        """The watched sources and the outboxes (registered sets: no scan of the keyspace)."""
        from events.outbox import REGISTRY
        from services.ingest_watcher.watcher import SOURCES

        summaries = sorted(k.decode() for k in client.smembers(SOURCES))
        outboxes = sorted(k.decode() for k in client.smembers(REGISTRY))
        with client.pipeline(transaction=False) as pipe:
            for key in summaries:
                pipe.get(key)
            for stream in outboxes:
                pipe.xlen(stream)
            answers = pipe.execute()
        found = []
        for key, raw in zip(summaries, answers[:len(summaries)], strict=True):
            summary = data._json(raw) or {}
            found.append({"name": summary.get("uri", key), "digest": summary.get("digest"),
                          "changes": summary.get("sequence"), "at": summary.get("at")})
        for stream, depth in zip(outboxes, answers[len(summaries):], strict=True):
            found.append({"name": f"outbox {stream.removeprefix('retrain:outbox:')}",
                          "depth": depth})
        return found

    def overview(offset: int, limit: int) -> dict[str, Any]:
        view = champion_view()
        return data.clean({"champion": view["champion"], "since": view["since"],
                           "replaced": view["replaced"], "runs": data.runs(client, offset, limit),
                           "sources": sources()})

    def page(request: Request, title: str, body: str, actions: str = "") -> HTMLResponse:
        if request.headers.get("x-fragment") == "1":
            return HTMLResponse(body)
        return HTMLResponse(pages.layout(title, body, actions))

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Ready while Redis answers (everything shown is read from it)."""
        try:
            client.ping()
        except redis.RedisError as exc:
            return JSONResponse({"status": "unavailable", "problem": f"Redis: {exc}"}, 503)
        return JSONResponse({"status": "ok"})

    # the API -----------------------------------------------------------------------------------
    @app.get("/api/overview")
    def api_overview(request: Request, offset: int = Query(0, ge=0), limit: int = Query(data.PAGE, ge=1, le=data.MAX_PAGE)) -> dict[str, Any]:
        check_key(request, False)
        return overview(offset, limit)

    @app.get("/api/runs")
    def api_runs(request: Request, offset: int = Query(0, ge=0),
                 limit: int = Query(data.PAGE, ge=1, le=data.MAX_PAGE)) -> dict[str, Any]:
        check_key(request, False)
        return data.clean(data.runs(client, offset, limit))

    @app.get("/api/runs/{run_id}")
    def api_run(request: Request, run_id: str) -> dict[str, Any]:
        check_key(request, False)
        found = data.run(client, run_id, store.decisions_of(run_id))
        if found is None:
            raise _Refused(404, f"no run {run_id!r} (runs are kept 30 days)")
        return data.clean(found)

    @app.get("/api/models")
    def api_models(request: Request) -> dict[str, Any]:
        check_key(request, False)
        return data.clean(champion_view())

    @app.get("/api/events")
    def api_events(request: Request, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        check_key(request, False)
        return data.clean({"events": data.events(client, limit),
                           "dead_letters": data.dead_letters(client)})

    @app.post("/api/rollback")
    def api_rollback(request: Request) -> dict[str, Any]:
        check_key(request, True)
        if rollback is None:
            raise _Refused(501, "rollback is done by the selector here: retrain select rollback")
        from services.selector.errors import SelectorError

        try:
            decision = rollback("rolled back from the dashboard")
        except SelectorError as exc:
            raise _Refused(409, str(exc)) from None
        return data.clean({"decision": decision})

    @app.post("/api/dead-letters/replay")
    async def api_replay(request: Request) -> dict[str, Any]:
        check_key(request, True)
        from events.dead_letters import replay

        try:
            body = json.loads(await _body(request, 4096))
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise _Refused(400, 'expected {"stream": ..., "id": ...}')
        try:
            done = replay(client, [body["id"]], body.get("stream"))
        except (ValueError, KeyError) as exc:
            raise _Refused(400, str(exc)) from None
        return {"replayed": [d.entry_id for d in done]}

    @app.post("/api/predict")
    async def api_predict(request: Request) -> JSONResponse:
        """One image through the served model's V1 API (the page cannot reach the model
        server's port itself on a cluster)."""
        check_key(request, False)
        if serve_url is None:
            raise _Refused(501, "no model server is configured (RETRAIN_UI_SERVE_URL)")
        body = await _body(request, MAX_IMAGE_BYTES * 2)  # base64 and JSON around it
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                answer = await http.post(f"{serve_url}/v1/models/{MODEL_NAME}:predict",
                                         content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise _Refused(502, f"the model server did not answer: {exc}") from None
        try:
            body_out = answer.json()
        except ValueError:
            body_out = {"error": answer.text[:500]}
        return JSONResponse(body_out, status_code=answer.status_code,
                            headers={"x-model-version": answer.headers.get("x-model-version", "")})

    # the pages ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, offset: int = Query(0, ge=0)) -> HTMLResponse:
        check_key(request, False)
        view = overview(offset, data.PAGE)
        body = (pages.champion_card(view["champion"], view["since"], view["replaced"])
                + pages.runs_table(view["runs"]) + pages.sources_table(view["sources"]))
        return page(request, "overview", body)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_view(request: Request, run_id: str) -> HTMLResponse:
        return page(request, f"run {run_id}", pages.run_page(api_run(request, run_id)))

    @app.get("/models", response_class=HTMLResponse)
    def models_view(request: Request) -> HTMLResponse:
        view = api_models(request)
        body = pages.models_page(pages.champion_card(view["champion"], view["since"],
                                                     view["replaced"]),
                                 [*view["history"], *([view["champion"]] if view["champion"] else [])],
                                 view["decisions"])
        return page(request, "models", body, pages.rollback_form(rollback is not None))

    @app.get("/events", response_class=HTMLResponse)
    def events_view(request: Request) -> HTMLResponse:
        view = api_events(request, 100)
        return page(request, "events", pages.events_page(view["events"], view["dead_letters"]),
                    pages.key_form())

    @app.get("/try", response_class=HTMLResponse)
    def try_view(request: Request) -> HTMLResponse:
        check_key(request, False)
        return page(request, "try it", "<h1>try it</h1>", pages.try_form())

    return app
