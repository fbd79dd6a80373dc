"""A version compiled for LiteRT in a child process, while another version serves traffic.

TensorFlow's LiteRT converter is Python and native code that holds the interpreter lock for
long stretches: beside a thread ticking every millisecond, converting this small model
stopped it for 100 ms to 2 s at a time (a full garbage collection the converter asks for,
the graph's import and freezing). In the server's process every request waits on those
pauses; in a child process they cost the server some of a core's time, not its lock, and the
child's start (importing TensorFlow, 2-3 s) is paid while the old version goes on answering.
The first version, with no traffic to disturb, is compiled in the server's own process
(``model.LoadedModel.compile``): faster to ready.

    python -m services.serving.compile_apart SAVED_MODEL OUT   (what ``compile_apart`` runs)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow: the child imports it only once configured (``main``)
    from services.serving.lite import CompiledModel

TIMEOUT = 600.0  # seconds; a child past it is killed and the version stays on TensorFlow


class CompileFailedError(Exception):
    """The converter refused the model (its last line of error output is the message), or
    the child failed otherwise."""


def compile_apart(saved_model: Path, timeout: float = TIMEOUT) -> CompiledModel:
    """``saved_model``'s ``predict_images`` signature converted in a child process, then
    loaded and warmed here (``CompiledModel.warm``); ``CompileFailedError`` when it cannot."""
    from services.serving.lite import CompiledModel

    with tempfile.TemporaryDirectory(prefix="retrain-litert-") as folder:
        out = Path(folder) / "model.tflite"
        try:
            done = subprocess.run([sys.executable, "-m", __name__, str(saved_model), str(out)],
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CompileFailedError(f"the LiteRT converter took more than {timeout:g}s") from None
        if done.returncode != 0 or not out.is_file():
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            raise CompileFailedError(lines[-1] if lines else f"exit code {done.returncode}")
        flatbuffer = out.read_bytes()
    return CompiledModel(flatbuffer).warm()


def main(argv: list[str] | None = None) -> None:
    """The child: convert ``SAVED_MODEL``'s signature, write the flatbuffer to ``OUT``."""
    saved_model, out = argv or sys.argv[1:]
    # not niced: on a saturated machine a niced child took 30 s and more to convert (measured)
    from core.tf_start import configure, quiet_native

    configure()
    import tensorflow as tf

    from services.serving.lite import SIGNATURE

    with quiet_native():
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
        flatbuffer = converter.convert()
    Path(out).write_bytes(flatbuffer)


if __name__ == "__main__":
    main()
