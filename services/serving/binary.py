"""The Open Inference Protocol's binary tensor data extension, as Triton and KServe speak it.

A request may carry its tensors after the JSON object instead of inside it: the header
``Inference-Header-Content-Length`` says where the JSON ends, and each input that is sent
this way says how many bytes it takes (``parameters.binary_data_size``), in the order of the
inputs. Numbers are little-endian, row major, without padding; a BYTES element is a 4-byte
little-endian length followed by that many bytes. Outputs are returned the same way when the
request asks (``binary_data`` on an output, or ``binary_data_output`` for all of them), which
is what ``tritonclient`` does by default. Pure: bytes in, arrays out.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson

from services.serving.errors import BadRequestError

HEADER = "Inference-Header-Content-Length"
NUMBERS = {"FP32": "<f4", "FP64": "<f8", "UINT8": "u1", "INT32": "<i4", "INT64": "<i8"}


def split(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
    """(the JSON object, the binary data after it); no header: all JSON, no binary part."""
    if header_length is None:
        return raw, None
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequestError(f"{HEADER} must be a number of bytes, got {header_length!r}") from None
    if not 0 < length <= len(raw):
        raise BadRequestError(f"{HEADER} {length} does not fit a body of {len(raw)} bytes")
    return raw[:length], memoryview(raw)[length:]


def binary_size(tensor: dict[str, Any], where: str) -> int | None:
    """The ``binary_data_size`` the tensor declares, or None when its data is JSON."""
    parameters = tensor.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequestError(f"{where}.parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError(f"{where}.parameters.binary_data_size must be a non-negative integer")
    return size


def chunks(inputs: list[dict[str, Any]], binary: memoryview | None) -> list[memoryview | None]:
    """Each input's binary data (None: sent as JSON), cut from ``binary`` in order; the sizes
    must add up to the binary part exactly."""
    found: list[memoryview | None] = []
    offset = 0
    for n, tensor in enumerate(inputs):
        size = binary_size(tensor, f"inputs[{n}]")
        if size is None:
            found.append(None)
            continue
        if binary is None:
            raise BadRequestError(f"inputs[{n}] declares binary_data_size but the request has no "
                                  f"{HEADER} header (so no binary data)")
        if offset + size > len(binary):
            raise BadRequestError(f"inputs[{n}].parameters.binary_data_size {size} runs past the "
                                  f"{len(binary) - offset} bytes of binary data left")
        found.append(binary[offset:offset + size])
        offset += size
    if binary is not None and offset != len(binary):
        raise BadRequestError(f"the binary data is {len(binary)} bytes but the inputs' "
                              f"binary_data_size add up to {offset}")
    return found


def bytes_elements(chunk: memoryview, count: int, where: str) -> list[bytes]:
    """``count`` BYTES elements, each a 4-byte little-endian length and its bytes."""
    elements = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise BadRequestError(f"{where}: a BYTES element's 4-byte length is cut off")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise BadRequestError(f"{where}: a BYTES element of {length} bytes runs past the "
                                  f"{len(chunk) - offset} bytes left")
        elements.append(bytes(chunk[offset:offset + length]))
        offset += length
        if len(elements) > count:
            break
    if len(elements) != count:
        raise BadRequestError(f"{where}: the shape says {count} BYTES elements, the binary data "
                              f"holds {'more' if len(elements) > count else len(elements)}")
    return elements


def numbers(chunk: memoryview, datatype: str, count: int, where: str) -> np.ndarray:
    """``count`` numbers of ``datatype``, as sent (the caller makes them float32, and checks
    that they fit)."""
    dtype = np.dtype(NUMBERS[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise BadRequestError(f"{where}: {count} {datatype} values take {count * dtype.itemsize} "
                              f"bytes, the binary data holds {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype)


def wants_binary(body: dict[str, Any], output: str) -> bool:
    """Whether ``output`` is to be returned as binary data: the output's own ``binary_data``
    if the request names it, else the request's ``binary_data_output``."""
    for requested in body.get("outputs") or []:
        if isinstance(requested, dict) and requested.get("name") == output:
            parameters = requested.get("parameters") or {}
            if isinstance(parameters, dict) and "binary_data" in parameters:
                return parameters["binary_data"] is True
    parameters = body.get("parameters") or {}
    return isinstance(parameters, dict) and parameters.get("binary_data_output") is True


def json_bytes(body: dict[str, Any]) -> bytes:
    """``body`` as JSON, its NumPy arrays as lists: a float32 array's values written as the
    shortest decimals that read back as the same float32 values (``0.1``, not the
    ``0.10000000149011612`` of the value widened to a double), by orjson in ~1 µs where
    ``json.dumps`` of ``tolist()`` took ~10. The data plane has refused answers that are not
    finite numbers before they get here (orjson would write them as null). What orjson
    refuses, such as a request's ``id`` holding a lone surrogate (which ``json.loads``
    accepted), is written by ``json.dumps`` as before: the string escaped, the values as
    the doubles they widen to."""
    try:
        return orjson.dumps(body, default=_listed, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(body, default=_as_doubles, separators=(",", ":"),
                          allow_nan=False).encode()


def _as_doubles(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _listed(value: Any) -> Any:
    """What orjson does not write itself: an array that is not C-ordered (written as a copy
    that is), or of a type orjson does not take (as a list)."""
    if isinstance(value, np.ndarray):
        ordered = np.ascontiguousarray(value)
        return ordered if ordered is not value else value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def response(header: dict[str, Any], output: dict[str, Any], values: np.ndarray,
             binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers, the output's data inline or after the JSON."""
    if not binary:
        body = {**header, "outputs": [{**output, "data": values.ravel()}]}
        return json_bytes(body), {"Content-Type": "application/json"}
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    described = {**output, "parameters": {"binary_data_size": len(data)}}
    text = json_bytes({**header, "outputs": [described]})
    return text + data, {HEADER: str(len(text)), "Content-Type": "application/octet-stream"}
