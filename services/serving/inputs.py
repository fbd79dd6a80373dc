"""What a prediction request asks for, checked: KServe V1 instances and Open Inference
Protocol V2 inputs (JSON, or binary tensor data), turned into one of two kinds of model input
("bytes": encoded images, "arrays": n x 28 x 28 floats). Shared by the HTTP and gRPC APIs.
Pure: no I/O, no model."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from dataset.image_header import size_problem
from repository.layout import OUTPUT
from services.serving import binary as wire
from services.serving.errors import BadRequestError

MAX_INSTANCES = 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    try:  # as JSON parsed them (doubles): one past float32's range is refused by _pixels
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise BadRequestError(f"{where}: expected a 28x28 array of numbers") from None
    if array.shape != (28, 28):
        raise BadRequestError(f"{where}: expected a 28x28 array, got shape {list(array.shape)}")
    return array


def _not_float32(where: str, sent: Any) -> str:
    """Why the value sent at ``where`` cannot go to the model: NaN, or a number past float32's
    largest (3.4e38, either sign), which became infinity (Python's JSON parser also takes
    ``NaN``, ``Infinity`` and ``1e999``)."""
    try:
        number = float(sent)
    except (TypeError, ValueError):
        number = float("nan")
    if math.isnan(number):
        return f"{where}: not a number"
    return f"{where}: {number!r} is out of float32's range (its largest is {FLOAT32_MAX:.1e})"


def v1_inputs(body: Any) -> tuple[str, list[bytes] | np.ndarray]:
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
        images = np.stack([_as_images(i, f"instances[{n}]") for n, i in enumerate(instances)])
        return "arrays", _pixels(images, lambda at: (
            f"instances[{at // 784}][{at % 784 // 28}][{at % 28}]",
            instances[at // 784][at % 784 // 28][at % 28]))
    raise BadRequestError(
        'each instance must be {"image_bytes": {"b64": ...}} or a 28x28 array (not mixed)'
    )


def v2_inputs(body: Any, binary: memoryview | None = None) -> tuple[str, list[bytes] | np.ndarray]:
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
            sent = wire.numbers(chunk, datatype, shape[0] * 784, "inputs[0]")
            return "arrays", _pixels(sent.reshape(shape),
                                     lambda at: (f"inputs[0] element {at}", sent[at]))
        try:
            array = np.asarray(flat, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise BadRequestError("inputs[0].data must hold numbers") from None
        if array.size != shape[0] * 784:
            raise BadRequestError(f"shape {shape} needs {shape[0] * 784} values, got {array.size}")
        return "arrays", _pixels(array.reshape(shape),
                                 lambda at: (f"inputs[0].data element {at}", flat[at]))
    raise BadRequestError(f"unsupported datatype {datatype!r} (BYTES, or FP32, FP64, UINT8, "
                          "INT32, INT64)")


def v2_outputs(body: dict[str, Any]) -> None:
    """Only the one output there is may be asked for."""
    requested = body.get("outputs")
    if requested is None:
        return
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise BadRequestError('"outputs" must be a list of objects')
    unknown = [o.get("name") for o in requested if o.get("name") != OUTPUT]
    if unknown:
        raise BadRequestError(f"unknown output(s) {unknown}: this model has only {OUTPUT!r}")


def _pixels(values: np.ndarray, sent_at: Callable[[int], tuple[str, Any]]) -> np.ndarray:
    """The images as float32 pixels in 0..1, from ``values`` as sent (any real type). Every
    value must be a number float32 holds: the first that is not (``sent_at(row-major index)``:
    where it was, what was sent) is a 400, rather than a model answering NaN or nonsense. A
    request whose values exceed 1 sent 0..255: decided per request here, not per model call,
    where micro-batching puts several clients' images together."""
    top, bottom = float(values.max()), float(values.min())  # NaN if any value is NaN
    if not (top <= FLOAT32_MAX and bottom >= -FLOAT32_MAX):
        fits = np.abs(values) <= FLOAT32_MAX  # NaN: False
        raise BadRequestError(_not_float32(*sent_at(int(np.argmin(fits)))))
    images = values.astype(np.float32)  # checked: nothing overflows
    return images / np.float32(255.0) if np.float32(top) > 1.0 else images
