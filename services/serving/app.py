"""The local model server: KServe V1 and Open Inference Protocol V2 on one data plane."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core.http import BodyTooLargeError, read_body
from core.settings import MODEL_NAME
from dataset.image_header import size_problem
from services.serving import binary as wire
from services.serving.batching import BatchConfig, MicroBatcher
from services.serving.errors import (
    BadRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServingError,
    UnauthorizedError,
)
from services.serving.limits import Backlog, RateLimiter, UnknownKeyError, retry_after_header
from services.serving.model import ModelHolder

MAX_BODY = 8 * 1024 * 1024
MAX_INSTANCES = 1024
OUTPUT = "probabilities"
SERVER_VERSION = "0.1.0"
MAX_QUEUED = 4096  # images accepted and not yet answered (RETRAIN_SERVE_MAX_QUEUED)


def _decode_b64(value: Any, where: str) -> bytes:
    if isinstance(value, dict):
        value = value.get("b64")
    if not isinstance(value, str):
        raise BadRequestError(f"{where}: expected {{\"b64\": \"...\"}} with base64 image bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{where}: b64 value is not valid base64") from None
    return _checked_image(raw, where)


def _checked_image(raw: bytes, where: str) -> bytes:
    problem = size_problem(raw)  # from the header, before a decoder allocates anything
    if problem is not None:
        raise BadRequestError(f"{where}: cannot decode image bytes: the image {problem}")
    return raw


def _as_images(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRequestError(f"{where}: expected a 28x28 array of numbers") from None
    if array.shape != (28, 28):
        raise BadRequestError(f"{where}: expected a 28x28 array, got shape {list(array.shape)}")
    return array


def _v1_inputs(body: Any) -> tuple[str, list[bytes] | np.ndarray]:
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequestError('request must be a JSON object with "instances"')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('"instances" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise BadRequestError(f'"instances" holds {len(instances)} items; the limit is {MAX_INSTANCES}')
    if all(isinstance(i, dict) and "image_bytes" in i for i in instances):
        return "bytes", [_decode_b64(i["image_bytes"], f"instances[{n}].image_bytes")
                         for n, i in enumerate(instances)]
    if all(isinstance(i, list) for i in instances):
        return "arrays", np.stack([_as_images(i, f"instances[{n}]") for n, i in enumerate(instances)])
    raise BadRequestError(
        'each instance must be {"image_bytes": {"b64": ...}} or a 28x28 array (not mixed)'
    )


def _v2_inputs(body: Any, binary: memoryview | None = None) -> tuple[str, list[bytes] | np.ndarray]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequestError('request must be a JSON object with a non-empty "inputs" list')
    if len(body["inputs"]) != 1:
        raise BadRequestError("exactly one input tensor is expected (image_bytes or images)")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequestError("inputs[0] must be an object")
    [chunk] = wire.chunks(body["inputs"], binary)
    missing = [k for k in ("name", "shape", "datatype", *(["data"] if chunk is None else []))
               if k not in tensor]
    if missing:
        raise BadRequestError(f"inputs[0] lacks {', '.join(missing)}")
    shape, datatype = tensor["shape"], tensor["datatype"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequestError("inputs[0].shape must be a list of non-negative integers")
    if not isinstance(datatype, str):
        raise BadRequestError("inputs[0].datatype must be a string (BYTES, FP32, ...)")
    flat: Any = None
    if chunk is None:
        data = tensor["data"]
        if not isinstance(data, list):
            raise BadRequestError("inputs[0].data must be a list")
        flat = np.asarray(data, dtype=object).ravel().tolist() if data and isinstance(data[0], list) else data
    if datatype == "BYTES":
        if len(shape) != 1 or shape[0] < 1:
            raise BadRequestError(f"BYTES input must have shape [n], got {shape}")
        if shape[0] > MAX_INSTANCES:
            raise BadRequestError(f"batch of {shape[0]} exceeds the limit {MAX_INSTANCES}")
        if chunk is not None:  # raw image bytes: nothing to base64-decode
            images = wire.bytes_elements(chunk, shape[0], "inputs[0]")
            return "bytes", [_checked_image(raw, f"inputs[0] element {n}") for n, raw in enumerate(images)]
        if shape[0] != len(flat):
            raise BadRequestError(f"BYTES input shape {shape} does not match {len(flat)} elements")
        return "bytes", [_decode_b64(v, f"inputs[0].data[{n}]") for n, v in enumerate(flat)]
    if datatype in wire.NUMBERS:
        if len(shape) != 3 or shape[1:] != [28, 28] or shape[0] < 1:
            raise BadRequestError(f"numeric input must have shape [n, 28, 28], got {shape}")
        if shape[0] > MAX_INSTANCES:
            raise BadRequestError(f"batch of {shape[0]} exceeds the limit {MAX_INSTANCES}")
        if chunk is not None:
            return "arrays", wire.numbers(chunk, datatype, shape[0] * 784, "inputs[0]").reshape(shape)
        try:
            array = np.asarray(flat, dtype=np.float32)
        except (TypeError, ValueError):
            raise BadRequestError("inputs[0].data must hold numbers") from None
        if array.size != shape[0] * 784:
            raise BadRequestError(f"shape {shape} needs {shape[0] * 784} values, got {array.size}")
        return "arrays", array.reshape(shape)
    raise BadRequestError(f"unsupported datatype {datatype!r} (BYTES, or FP32, FP64, UINT8, "
                          "INT32, INT64)")


def _v2_outputs(body: dict[str, Any]) -> None:
    """Only the one output there is may be asked for."""
    requested = body.get("outputs")
    if requested is None:
        return
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise BadRequestError('"outputs" must be a list of objects')
    unknown = [o.get("name") for o in requested if o.get("name") != OUTPUT]
    if unknown:
        raise BadRequestError(f"unknown output(s) {unknown}: this model has only {OUTPUT!r}")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None


def create_app(model_repo: Path, *, poll_seconds: float = 1.0, model_name: str = MODEL_NAME,
               limiter: RateLimiter | None = None,
               batching: BatchConfig | None = BatchConfig(),
               model_dir: Path | None = None, max_queued: int = MAX_QUEUED) -> FastAPI:
    """The server. ``limiter`` (None: no limits) guards the predict and infer endpoints;
    ``batching`` (None: every request is its own model call) groups concurrent requests;
    past ``max_queued`` images waiting for the model, requests are answered 503.
    The versions are read from ``model_repo/model_name/<version>/``, or, with ``model_dir``,
    from ``model_dir/<version>/`` (where KServe's storage initializer puts them)."""
    holder = ModelHolder(model_dir or model_repo / model_name)
    registry = CollectorRegistry()
    batch_sizes = Histogram("retrain_serving_batch_size", "Images per model call",
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=registry)
    requests_total = Counter("retrain_serving_requests", "Requests", ["protocol", "code"], registry=registry)
    latency = Histogram("retrain_serving_latency_seconds", "Latency", ["protocol"], registry=registry)
    version_gauge = Gauge("retrain_serving_model_version", "Version being served", registry=registry)
    backlog = Backlog(max_queued)
    Gauge("retrain_serving_queued_images", "Images accepted and not yet answered",
          registry=registry).set_function(lambda: backlog.images)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            version = holder.refresh()
            version_gauge.set(version or 0)
            stop.wait(poll_seconds)

    batcher: list[MicroBatcher] = []

    async def predict(kind: str, inputs: list[bytes] | np.ndarray) -> tuple[np.ndarray, int]:
        with backlog.admitted(len(inputs)):
            if batcher:
                return await batcher[0].predict(kind, inputs)
            model = holder.current  # the version answering, even if a swap happens meanwhile
            probs = await run_in_threadpool(model.predict, kind, [inputs])
            batch_sizes.observe(len(inputs))
            return probs, model.version

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        await run_in_threadpool(holder.refresh)
        thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        thread.start()
        if batching is not None:
            batcher.append(MicroBatcher(lambda: holder.current, batching, batch_sizes.observe))
        yield
        stop.set()
        if batcher:
            batcher.pop().close()

    app = FastAPI(title="retrain model server", lifespan=lifespan)
    app.state.holder = holder

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        protocol = "v2" if request.url.path.startswith("/v2") else "v1"
        requests_total.labels(protocol, str(exc.status)).inc()
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    def _admit(request: Request) -> None:
        if limiter is None:
            return
        address = request.client.host if request.client else "unknown"
        try:
            verdict = limiter.check(address, request.headers.get("authorization"))
        except UnknownKeyError as exc:
            raise UnauthorizedError(str(exc)) from None
        if not verdict.allowed:
            raise RateLimitedError(
                f"rate limit of {verdict.rate:g} requests/s exceeded for {verdict.client}",
                retry_after_header(verdict.retry_after))

    async def _raw_body(request: Request) -> bytes:
        try:
            return await read_body(request, MAX_BODY)
        except BodyTooLargeError as exc:
            raise PayloadTooLargeError(str(exc)) from None

    async def _body(request: Request) -> Any:
        return _json(await _raw_body(request))

    def _check_name(name: str) -> None:
        if name != model_name:
            raise ModelNotFoundError(f"model {name!r} not found (this server serves {model_name!r})")

    # KServe V1 -------------------------------------------------------------------------------
    @app.get("/v1/models/{name}")
    def v1_status(name: str) -> dict[str, Any]:
        _check_name(name)
        model = holder.current
        return {"name": name, "ready": True, "model_version": str(model.version)}

    @app.post("/v1/models/{name}:predict")
    async def v1_predict(name: str, request: Request) -> Response:
        _check_name(name)
        _admit(request)
        started = time.perf_counter()
        kind, inputs = _v1_inputs(await _body(request))
        probs, version = await predict(kind, inputs)
        latency.labels("v1").observe(time.perf_counter() - started)
        requests_total.labels("v1", "200").inc()
        return JSONResponse({"predictions": probs.tolist(), "model_version": str(version)},
                            headers={"X-Model-Version": str(version)})

    # Open Inference Protocol V2 --------------------------------------------------------------
    @app.get("/v2")
    def v2_server_metadata() -> dict[str, Any]:
        return {"name": "retrain", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def v2_ready() -> Response:
        return JSONResponse({"ready": holder.ready}, status_code=200 if holder.ready else 503)

    @app.get("/v2/models/{name}")
    def v2_metadata(name: str) -> dict[str, Any]:
        _check_name(name)
        model = holder.current
        return {
            "name": name, "versions": [str(model.version)], "platform": "tensorflow_savedmodel",
            "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
                       {"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 10]}],
        }

    @app.get("/v2/models/{name}/ready")
    def v2_model_ready(name: str) -> Response:
        _check_name(name)
        return JSONResponse({"name": name, "ready": holder.ready},
                            status_code=200 if holder.ready else 503)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        _check_name(name)
        _admit(request)
        started = time.perf_counter()
        text, binary = wire.split(await _raw_body(request), request.headers.get(wire.HEADER))
        body = _json(text)
        kind, inputs = _v2_inputs(body, binary)
        _v2_outputs(body)
        probs, version = await predict(kind, inputs)
        latency.labels("v2").observe(time.perf_counter() - started)
        requests_total.labels("v2", "200").inc()
        content, headers = wire.response(
            {"model_name": name, "model_version": str(version),
             "id": str(body.get("id") or uuid.uuid4())},
            {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)},
            probs, wire.wants_binary(body, OUTPUT))
        return Response(content, headers={**headers, "X-Model-Version": str(version)})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
