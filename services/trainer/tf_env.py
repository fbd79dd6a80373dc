"""TensorFlow process setup: Keras 2 (tf_keras) and a quiet C++ log. Call before importing TF."""

from __future__ import annotations

import os


def configure() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
