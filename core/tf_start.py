"""TensorFlow process setup: Keras 2 (tf_keras) and a quiet start. Call before importing TF.

TensorFlow's native code writes its start-up lines ("oneDNN custom operations are on",
"Could not find cuda drivers", "failed call to cuInit", absl's "All log messages before
absl::InitializeLog()") straight to file descriptor 2, whatever ``TF_CPP_MIN_LOG_LEVEL``
says. Unless ``RETRAIN_LOG_LEVEL=debug`` (or a command's ``--verbose``) asks for them,
``configure`` imports TensorFlow and finds its devices with descriptor 2 pointed at a
temporary file; what other code wrote there meanwhile is written back, TensorFlow's own
lines are kept for the debug log.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import threading

log = logging.getLogger(__name__)
# absl's lines ("I0000 ...", "WARNING: All log messages before absl::InitializeLog()") and
# LiteRT's ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."); uvicorn pads its own
# ("INFO:     "), so they still reach the terminal
NATIVE = re.compile(rb"^(?:[IWEF]\d{4} |(?:INFO|WARNING|ERROR): \S)")
_lock = threading.Lock()
_fd2 = threading.Lock()  # one redirection of descriptor 2 at a time: nested ones, from two
# threads, would restore each other's temporary file as the process's stderr
_started = False


def native_logs_wanted() -> bool:
    return os.environ.get("RETRAIN_LOG_LEVEL", "").lower() == "debug"


def configure() -> None:
    global _started
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _lock:
        if _started:
            return
        _started = True
        if "tensorflow" not in sys.modules:
            with quiet_native():
                import tensorflow as tf

                tf.config.list_physical_devices()  # the CUDA probe, and its complaint, here
        # in a runner that measured agreement, each later ingestion of 20,000 files paid
        # ~150 ms of full collections walking TensorFlow's objects
        freeze_what_is_loaded()


def freeze_what_is_loaded() -> None:
    """What the process holds now (TensorFlow's modules: some 300,000 objects that live as
    long as it does) moved out of the collector's sight, its garbage collected first: a full
    collection no longer walks them all. Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


def quiet_native():  # type: ignore[no-untyped-def]
    """A context in which TensorFlow's native lines on descriptor 2 go to the debug log (as
    during ``configure``), unless they are wanted."""
    return contextlib.nullcontext() if native_logs_wanted() else _quiet_fd2()


@contextlib.contextmanager
def _quiet_fd2():  # type: ignore[no-untyped-def]
    with _fd2:
        yield from _redirected_fd2()


def _redirected_fd2():  # type: ignore[no-untyped-def]
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to speak of
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            others, native = [], []
            for line in sink.read().splitlines(keepends=True):
                (native if NATIVE.match(line) else others).append(line)
            if others:  # another thread's output: it still reaches the terminal
                os.write(2, b"".join(others))
            if native:
                log.debug("TensorFlow's start-up lines:\n%s",
                          b"".join(native).decode(errors="replace").rstrip())
