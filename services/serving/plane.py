"""What the model server's HTTP and gRPC APIs share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from services.serving.model import ModelHolder

SERVER_NAME = "retrain"  # what server metadata says, over HTTP (GET /v2) and gRPC
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data",)


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
