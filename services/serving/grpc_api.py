"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside the HTTP
API on the same event loop, model, micro-batching, bounded backlog, rate limits and API keys
(metadata ``authorization: Bearer KEY``).

The messages come from ``grpc_predict_v2.proto`` (``grpc_protocol``). An
input's data is taken from ``raw_input_contents`` (what tritonclient sends) or from its typed
``contents``; either is checked by the same code as an HTTP request carrying binary tensor
data. The output is returned in ``raw_output_contents`` (little-endian FP32). A serving error
becomes the gRPC status a client expects (INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE) with the same message as over HTTP.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from typing import Any

import grpc
import numpy as np

from core.auth import KeyRefusedError
from core.errors import PortInUseError
from services.serving import binary as wire
from services.serving.errors import ANSWERED, BadRequestError, ServingError
from services.serving.grpc_protocol import handler
from services.serving.grpc_protocol import messages as protos
from services.serving.inputs import OUTPUT, v2_inputs
from services.serving.plane import Plane

log = logging.getLogger(__name__)
MAX_MESSAGE = 8 * 1024 * 1024  # as the HTTP body limit
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
TYPED = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
         "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents"}


def _typed_as_raw(datatype: str, contents: Any) -> bytes:
    """An input's typed ``contents`` in the binary layout of ``raw_input_contents``."""
    values = list(getattr(contents, TYPED.get(datatype, "fp32_contents")))
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    try:
        return np.asarray(values, dtype=wire.NUMBERS.get(datatype, "<f4")).tobytes()
    except (OverflowError, ValueError):  # a UINT8 content of 300, say
        raise BadRequestError(f"{datatype} contents hold a value out of its range") from None


def _inputs(request: Any) -> tuple[str, list[bytes] | np.ndarray]:
    """The request's input as the HTTP API's binary form, checked by the same code."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors, chunks = [], []
    for n, tensor in enumerate(request.inputs):
        data = raw[n] if raw else _typed_as_raw(tensor.datatype, tensor.contents)
        tensors.append({"name": tensor.name, "datatype": tensor.datatype,
                        "shape": list(tensor.shape), "parameters": {"binary_data_size": len(data)}})
        chunks.append(data)
    return v2_inputs({"inputs": tensors}, memoryview(b"".join(chunks)))


class InferenceService:
    """The RPCs, each ``async (request, context) -> response``."""

    def __init__(self, plane: Plane) -> None:
        self._plane = plane

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return protos.ServerLiveResponse(live=not self._plane.holder.broken)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return protos.ServerReadyResponse(ready=self._plane.holder.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self._plane.check_name(request.name)
        except ServingError as exc:
            await self._abort(context, exc)
        return protos.ModelReadyResponse(ready=self._plane.holder.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return protos.ServerMetadataResponse(**self._plane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            self._plane.check_name(request.name)
            described = self._plane.model_metadata(request.name)
        except ServingError as exc:
            await self._abort(context, exc)
        return protos.ModelMetadataResponse(**described)  # the tensors' dicts become messages

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """The statistics extension: each version's counts and durations (name "": every
        model; version "": every version)."""
        try:
            stats = self._plane.statistics(request.name, request.version)
        except ServingError as exc:
            await self._abort(context, exc)
        return protos.ModelStatisticsResponse(**stats)  # the dicts become messages

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            self._plane.check_name(request.model_name)
            metadata = dict(context.invocation_metadata() or ())
            self._plane.admit(_address(context.peer()), metadata.get("authorization"))
            unknown = [o.name for o in request.outputs if o.name != OUTPUT]
            if unknown:
                raise BadRequestError(f"unknown output(s) {unknown}: this model has only {OUTPUT!r}")
            kind, inputs = _inputs(request)
            probs, version = await self._plane.predict(kind, inputs)
        except ANSWERED as exc:  # a serving error, or an API key refused (core.auth)
            self._plane.refused("grpc", exc, time.perf_counter() - started)
            await self._abort(context, exc)
        except Exception as exc:  # a defect: said in the log, answered INTERNAL
            log.exception("ModelInfer failed")
            self._plane.refused("grpc", exc, time.perf_counter() - started)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        self._plane.answered("grpc", time.perf_counter() - started, version, probs)
        output = protos.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype="FP32",
                                                             shape=list(probs.shape))
        return protos.ModelInferResponse(
            model_name=request.model_name, model_version=str(version),
            id=request.id or str(uuid.uuid4()), outputs=[output],
            raw_output_contents=[np.ascontiguousarray(probs, dtype="<f4").tobytes()])

    @staticmethod
    async def _abort(context: Any, exc: ServingError | KeyRefusedError) -> None:
        """End the call with the status matching the HTTP one, its message, and (as trailing
        metadata) the Retry-After a 429 or 503 carries over HTTP."""
        await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), str(exc),
                            trailing_metadata=tuple((k.lower(), v) for k, v in exc.headers.items()))


def _address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` → ``127.0.0.1`` (the rate limiter's client address)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


async def start(plane: Plane, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serve on ``host:port`` (0: a free port); returns the server and the port it took."""
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE)])
    server.add_generic_rpc_handlers((handler(InferenceService(plane)),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise PortInUseError(host, port, "model server (gRPC)")
    await server.start()
    return server, bound
