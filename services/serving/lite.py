"""The served model's array signature compiled for LiteRT (TensorFlow Lite's interpreter).

A TensorFlow eager call of this small network costs ~0.7 ms for one image, nearly all of it
runtime overhead (function dispatch, the executor, a hand-off to the op thread); the same
ops in LiteRT's interpreter take ~0.1 ms (``benchmarks/README.md``). Under light load, where
batches are a few images, that overhead was most of a request's latency.

The model server compiles each version while it loads it, before it takes traffic
(``model.ModelHolder``), from the signature it has already loaded (``convert``: ~0.8 s; from
the SavedModel's folder, ``compile``, the converter loads the model twice more: ~1.2 s), and
warms every interpreter it will use (``warm``), so that no request pays for an interpreter's
creation. A model LiteRT cannot take (an op it lacks, say) is answered by TensorFlow. The
compiled model gives the probabilities TensorFlow gives, to float32 rounding
(``tests/services/serving/test_lite.py``). An interpreter is kept per batch size (1 to 8,
then multiples of 8 up to 64), each used by one thread at a time. A batch of another size runs
as two calls, its multiple of 8 and the rest (13 images: 8, then 5), never padded: the
network's cost is per image (~72 µs here, at every size), so a batch of 9 padded to 16 cost
what 16 cost, and at 32 concurrent clients most batches are between 9 and 32 images.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf  # configured by the entry point (core.tf_start), before this import
from ai_edge_litert.interpreter import Interpreter

from core.tf_start import quiet_native
from repository.layout import ARRAYS_SIGNATURE

log = logging.getLogger(__name__)
SIGNATURE = ARRAYS_SIGNATURE
MAX_BATCH = 64


SIZES = (*range(1, 9), *range(16, MAX_BATCH + 1, 8))  # 1..8, 16, ..., 64


def calls(n: int) -> list[int]:
    """The interpreter sizes a batch of ``n`` images runs as, in order (their sum is ``n``):
    runs of 64, then the rest's multiple of 8, then what is left (at most 7)."""
    sizes = [MAX_BATCH] * (n // MAX_BATCH)
    rest = n % MAX_BATCH
    if rest > 8 and rest % 8:
        sizes.append(rest // 8 * 8)
        rest %= 8
    if rest:
        sizes.append(rest)
    return sizes


class CompiledModel:
    """``predict(images)``: (n, 28, 28) float32 → (n, 10) probabilities."""

    def __init__(self, flatbuffer: bytes, threads: int = 1) -> None:
        self._flatbuffer = flatbuffer
        self._threads = threads
        self._interpreters: dict[int, tuple[Interpreter, int, int, threading.Lock]] = {}
        self._lock = threading.Lock()

    @classmethod
    def compile(cls, saved_model: Path, threads: int = 1) -> CompiledModel:
        """Convert the SavedModel's ``predict_images`` signature, read from its folder, and
        warm it (raises what the converter raises when it cannot)."""
        with quiet_native():
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                                 signature_keys=[SIGNATURE])
            flatbuffer = converter.convert()
        return cls(flatbuffer, threads).warm()

    @classmethod
    def convert(cls, signature: object, owner: object, threads: int = 1) -> CompiledModel:
        """Convert ``signature`` (the loaded ``predict_images`` concrete function of the
        SavedModel ``owner``, which holds its variables), and warm it (raises what the
        converter raises when it cannot)."""
        with quiet_native():
            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [signature], trackable_obj=owner)  # type: ignore[list-item]
            flatbuffer = converter.convert()
        return cls(flatbuffer, threads).warm()

    def warm(self) -> CompiledModel:
        """Create every interpreter (one per batch size) and run each once: its tensors
        allocated and its delegate set up here, not in a request."""
        with quiet_native():  # LiteRT's line for each delegate it creates, off the terminal
            # (quiet_native is not re-entrant: never called under another)
            for size in SIZES:
                self.predict(np.zeros((size, 28, 28), np.float32))
        return self

    def _interpreter(self, size: int) -> tuple[Interpreter, int, int, threading.Lock]:
        found = self._interpreters.get(size)
        if found is None:
            with self._lock:
                found = self._interpreters.get(size)
                if found is None:
                    interpreter = Interpreter(model_content=self._flatbuffer,
                                              num_threads=self._threads)
                    given = interpreter.get_input_details()[0]["index"]
                    interpreter.resize_tensor_input(given, [size, 28, 28])
                    interpreter.allocate_tensors()
                    found = (interpreter, given, interpreter.get_output_details()[0]["index"],
                             threading.Lock())
                    self._interpreters[size] = found
        return found

    def predict(self, images: np.ndarray) -> np.ndarray:
        pieces = []
        start = 0
        for size in calls(len(images)):
            interpreter, given, answer, busy = self._interpreter(size)
            with busy:
                interpreter.set_tensor(given, np.asarray(images[start:start + size], np.float32))
                interpreter.invoke()
                pieces.append(interpreter.get_tensor(answer))  # a copy, the buffer is reused
            start += size
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
