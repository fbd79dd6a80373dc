"""The inference routes as FastAPI documents them.

``POST /v1/models/{name}:predict`` and ``POST /v2/models/{name}/infer`` are answered ahead of
FastAPI (``inference_routes``), so FastAPI never routes a request to them. They are declared
here all the same, on the app that serves them, so that its ``/openapi.json`` and ``/docs``
describe them with the rest: methods, path, request and response bodies, the binary tensor
data extension, the optional API key and the errors. The schemas describe; the checks that
decide are ``inputs`` and ``binary`` (a request these schemas refuse may be answered with a
400 naming the problem, never with FastAPI's 422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from services.serving.binary import HEADER
from services.serving.inputs import MAX_INSTANCES

Image = Annotated[list[Annotated[list[float], Field(min_length=28, max_length=28)]],
                  Field(min_length=28, max_length=28,
                        description="28x28 grayscale pixels, 0..1 (or 0..255: scaled by the "
                                    "request's largest value); finite, within float32's range")]


class Base64(BaseModel):
    b64: str = Field(description="the image file (PNG, JPEG, ...), base64-encoded")


class EncodedImage(BaseModel):
    image_bytes: Base64


class V1Request(BaseModel):
    instances: list[EncodedImage | Image] = Field(
        min_length=1, max_length=MAX_INSTANCES,
        description="all encoded images, or all 28x28 arrays (not mixed)",
        examples=[[{"image_bytes": {"b64": "iVBORw0KGgo..."}}]])


class V1Response(BaseModel):
    predictions: list[list[float]] = Field(description="ten class probabilities per instance")
    model_version: str


class Parameters(BaseModel, extra="allow"):
    binary_data_size: int | None = Field(None, ge=0, description=(
        f"the tensor's bytes after the JSON object (the binary tensor data extension: the "
        f"{HEADER} header says where the JSON ends)"))
    binary_data: bool | None = Field(None, description="on an output: return it as binary data")


class InputTensor(BaseModel):
    name: Literal["image_bytes", "images"]
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        description="[n] for BYTES, [n, 28, 28] for numbers")
    datatype: Literal["BYTES", "FP32", "FP64", "UINT8", "INT32", "INT64"]
    data: list[Any] | None = Field(None, description=(
        "base64 strings (BYTES) or numbers, flat or nested row-major; absent when the tensor is "
        "sent as binary data"))
    parameters: Parameters | None = None


class RequestedOutput(BaseModel):
    name: Literal["probabilities"]
    parameters: Parameters | None = None


class V2Request(BaseModel):
    id: str | None = None
    inputs: list[InputTensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] | None = Field(None, examples=[{"binary_data_output": True}])


class OutputTensor(BaseModel):
    name: str
    datatype: Literal["FP32"]
    shape: list[int]
    data: list[float] | None = Field(None, description="absent when returned as binary data")
    parameters: Parameters | None = None


class V2Response(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


class ErrorBody(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "the request is malformed; the error names the problem"),
        (401, "Authorization presents a key that is not one of RETRAIN_API_KEYS"),
        (404, "this server does not serve that model"),
        (413, "the body is over the server's limit"),
        (429, "over the client's rate limit: see Retry-After"),
        (503, "no model is loaded yet, or too many images wait for it: see Retry-After"))}


VERSION_HEADER = {"X-Model-Version": {"description": "the model version that answered",
                                      "schema": {"type": "string"}}}
# the key is optional: FastAPI lists the bearer scheme as required, and an empty requirement
# beside it (FastAPI adds this list to its own) says "or none" (OpenAPI 3.1, Security
# Requirement Object)
ANONYMOUS_TOO = {"security": [{}]}


def _binary(what: str) -> dict[str, Any]:
    """The binary tensor data extension's body, as an OpenAPI media type."""
    return {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": f"{what} ({HEADER} says where the JSON ends)"}}}


# an optional key: anonymous callers are served too, at their own rate
bearer = HTTPBearer(auto_error=False, description="optional: one of RETRAIN_API_KEYS (its "
                                                  "own rate limit)")


async def predict(name: str, request: V1Request) -> V1Response:
    """Classify images (KServe V1). The answer's ``X-Model-Version`` header names the version."""
    raise _answered_ahead()


async def infer(name: str, request: V2Request,
                header_length: Annotated[int | None, Header(alias=HEADER, description=(
                    "with binary tensor data: the JSON request's length in bytes"))] = None,
                ) -> V2Response:
    """Classify images (Open Inference Protocol V2), JSON or with binary tensor data."""
    raise _answered_ahead()


def _answered_ahead() -> RuntimeError:
    return RuntimeError("the inference routes are answered ahead of FastAPI (ModelServer)")


def predict_docs(tag: str) -> APIRouter:
    """``POST /v1/models/{name}:predict``, for the OpenAPI document alone."""
    router = APIRouter(tags=[tag], dependencies=[Depends(bearer)])
    router.add_api_route("/v1/models/{name}:predict", predict, methods=["POST"],
                         responses={**ERRORS, 200: {"headers": VERSION_HEADER}},
                         openapi_extra=ANONYMOUS_TOO)
    return router


def infer_docs(tag: str) -> APIRouter:
    """``POST /v2/models/{name}/infer``, for the OpenAPI document alone."""
    router = APIRouter(tags=[tag], dependencies=[Depends(bearer)])
    router.add_api_route(
        "/v2/models/{name}/infer", infer, methods=["POST"],
        responses={**ERRORS, 200: {
            "content": _binary("the JSON answer, then its output's bytes"),
            "headers": {**VERSION_HEADER, HEADER: {
                "description": "with binary output: the JSON answer's length in bytes",
                "schema": {"type": "integer"}}}}},
        openapi_extra={**ANONYMOUS_TOO, "requestBody": {"content": _binary(
            "the JSON request, then its tensors' bytes")}})
    return router
