"""The two inference routes, answered in plain ASGI ahead of FastAPI.

``POST /v1/models/NAME:predict`` (KServe V1) and ``POST /v2/models/NAME/infer`` (Open
Inference Protocol V2) carry nearly all of a model server's traffic. Through FastAPI's
middleware, router, dependency solving and its Request and Response objects, each request
cost the event loop more than the parsing, the hand-off to the model thread and the answer
together (``benchmarks/README.md``, the serving section). Here they are a path match, the
body read against its limit, and the same checked parsing (``inputs``, ``binary``) as
before. Every other route (health, metadata, metrics) is FastAPI's, and FastAPI's OpenAPI
document describes these two as well (``inference_docs``). Errors are answered as the rest of
the server answers them: ``{"error": message}`` with the status and headers of the
``ServingError`` (or of ``core.auth.KeyRefusedError``, for a key that is not ours).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from core.http import BodyTooLargeError, read_limited
from services.serving import binary as wire
from services.serving.errors import ANSWERED, BadRequestError, PayloadTooLargeError
from services.serving.inputs import OUTPUT, v1_inputs, v2_inputs, v2_outputs
from services.serving.plane import Plane

log = logging.getLogger(__name__)
ROUTES = re.compile(r"^/(?:(v1)/models/([^/]+):predict|(v2)/models/([^/]+)/infer)$")
JSON = b"application/json"
_BINARY_HEADER = wire.HEADER.lower().encode()


class ClientGoneError(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None


async def _chunks(receive: Callable[[], Awaitable[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """The request body's chunks, as ASGI's ``receive`` hands them over."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def respond(send: Callable[[dict[str, Any]], Awaitable[None]], status: int,
                  content_type: bytes, content: bytes, headers: dict[str, str]) -> None:
    listed = [(b"content-type", content_type), (b"content-length", str(len(content)).encode())]
    listed += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": listed})
    await send({"type": "http.response.body", "body": content})


class InferenceRoutes:
    """``match(scope)`` says whether a request is one of the inference routes; ``answer``
    answers it."""

    def __init__(self, plane: Plane, max_body: int) -> None:
        self.plane = plane
        self.max_body = max_body

    @staticmethod
    def match(scope: dict[str, Any]) -> re.Match[str] | None:
        return ROUTES.match(scope["path"]) if scope["type"] == "http" else None

    async def answer(self, route: re.Match[str], scope: dict[str, Any], receive: Any,
                     send: Any) -> None:
        v1, v1_name, _, v2_name = route.groups()
        protocol, name = ("v1", v1_name) if v1 else ("v2", v2_name)
        if scope["method"] != "POST":
            await respond(send, 405, JSON, b'{"error":"method not allowed: use POST"}',
                          {"Allow": "POST"})
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            if key in (b"content-length", b"authorization", _BINARY_HEADER):
                headers[key] = value
        started = time.perf_counter()
        try:
            status, content_type, content, extra = await self._answer(
                protocol, name, scope, headers, receive, started)
        except ClientGoneError:
            return
        except ANSWERED as exc:  # a serving error, or an API key refused (core.auth)
            self.plane.refused(protocol, exc, time.perf_counter() - started)
            body = json.dumps({"error": str(exc)}).encode()
            await respond(send, exc.status, JSON, body, exc.headers)
            return
        except Exception as exc:  # a defect: said in the log, answered 500 (as FastAPI would)
            log.exception("%s %s failed", scope["method"], scope["path"])
            self.plane.refused(protocol, exc, time.perf_counter() - started)
            await respond(send, 500, JSON, b'{"error":"internal server error"}', {})
            return
        await respond(send, status, content_type, content, extra)

    async def _answer(self, protocol: str, name: str, scope: dict[str, Any],
                      headers: dict[bytes, bytes], receive: Any,
                      started: float) -> tuple[int, bytes, bytes, dict[str, str]]:
        plane = self.plane
        plane.check_name(name)
        client = scope.get("client")
        authorization = headers.get(b"authorization")
        plane.admit(client[0] if client else "unknown",
                    authorization.decode("latin-1") if authorization is not None else None)
        length = headers.get(b"content-length")
        try:
            raw = await read_limited(_chunks(receive), length.decode("latin-1") if length else None,
                                     self.max_body)
        except BodyTooLargeError as exc:
            raise PayloadTooLargeError(str(exc)) from None
        extra: dict[str, str]
        if protocol == "v1":
            kind, inputs = v1_inputs(parse_json(raw))
            probs, version = await plane.predict(kind, inputs)
            content = wire.json_bytes({"predictions": probs, "model_version": str(version)})
            content_type, extra = JSON, {}
        else:
            declared = headers.get(_BINARY_HEADER)
            text, binary = wire.split(raw, declared.decode("latin-1") if declared is not None else None)
            body = parse_json(text)
            kind, inputs = v2_inputs(body, binary)
            v2_outputs(body)
            probs, version = await plane.predict(kind, inputs)
            content, extra = wire.response(
                {"model_name": name, "model_version": str(version),
                 "id": str(body.get("id") or uuid.uuid4())},
                {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)},
                probs, wire.wants_binary(body, OUTPUT))
            content_type = extra.pop("Content-Type").encode()
        plane.answered(protocol, time.perf_counter() - started, version, probs)
        return 200, content_type, content, {**extra, "X-Model-Version": str(version)}
