""""Try it": one image through the served model's V1 API, proxied (the page cannot reach the
model server's port itself on a cluster). Reading, as far as keys go."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.http import read_body
from core.settings import MODEL_NAME
from dashboard.access import READING
from dashboard.errors import ModelServerUnreachableError, NotOfferedError
from dashboard.state import Ctx

MAX_IMAGE_BYTES = 1 << 20  # an uploaded or drawn image
MAX_BODY_BYTES = MAX_IMAGE_BYTES * 2  # base64 and JSON around it
TIMEOUT = 30.0

router = APIRouter(dependencies=READING)


@router.post("/api/predict")
async def predict(request: Request, dashboard: Ctx) -> JSONResponse:
    """The model server's answer as it gave it (status, body, ``x-model-version``)."""
    if dashboard.serve_url is None:
        raise NotOfferedError("no model server is configured (RETRAIN_UI_SERVE_URL)")
    body = await read_body(request, MAX_BODY_BYTES)
    url = f"{dashboard.serve_url}/v1/models/{MODEL_NAME}:predict"
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        try:
            answer = await http.post(url, content=body,
                                     headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise ModelServerUnreachableError(dashboard.serve_url, str(exc)) from None
    try:
        shown = answer.json()
    except ValueError:
        shown = {"error": answer.text[:500]}
    return JSONResponse(shown, status_code=answer.status_code,
                        headers={"x-model-version": answer.headers.get("x-model-version", "")})
