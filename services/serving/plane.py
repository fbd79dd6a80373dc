"""What the model server's HTTP and gRPC APIs share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from services.serving.inputs import OUTPUT
from services.serving.model import ModelHolder

# what metadata says, over HTTP (GET /v2, GET /v2/models/NAME) and gRPC
SERVER_NAME = "retrain"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "tensorflow_savedmodel"
INPUTS = (("image_bytes", "BYTES", (-1,)), ("images", "FP32", (-1, 28, 28)))  # name, type, shape
OUTPUTS = ((OUTPUT, "FP32", (-1, 10)),)


def server_version() -> str:
    """The installed retrain's version."""
    try:
        return version("retrain")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class Plane:
    """What the HTTP and gRPC APIs share: the served model, the one way to call it (batched,
    bounded) and the door (keys, rate limits), and the request metrics."""

    holder: ModelHolder
    model_name: str
    predict: Callable[[str, list[bytes] | np.ndarray], Awaitable[tuple[np.ndarray, int]]]
    admit: Callable[[str, str | None], None]  # (client address, Authorization) or raises
    count: Callable[[str, int], None]  # (protocol, status code)
    timed: Callable[[str, float], None]  # (protocol, seconds)
