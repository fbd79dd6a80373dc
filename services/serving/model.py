"""A loaded SavedModel version, and the holder that swaps versions without dropping requests.

With ``compile_at_load`` (``retrain serve``'s default, ``RETRAIN_SERVE_COMPILE_AT_LOAD``),
every version is compiled for LiteRT (``lite``) and warmed while it loads, before it takes
any traffic, the first one at start included (the server is not ready until then): its first
request takes the fast path, a model call of ~0.1 ms instead of TensorFlow's ~0.7 ms. A
version replacing one that serves is compiled by a worker process (``compile_apart``, started
once the first version serves, so that it has imported TensorFlow when the next arrives), so
that the converter does not hold up the requests answered meanwhile; ``close`` ends it. A
model LiteRT cannot take is answered by TensorFlow, said once in the log. Without it, a
version that has answered ``compile_after`` model calls is compiled in the background, and one
that replaces a served version is compiled before the swap; ``compile_after=None`` never
compiles.

The holder keeps the last versions it served loaded (``KEPT``), known by their files' digest
(``repository.digest``): a local rollback re-publishes a previous model under a new version
number in the same repository, and the server swaps to it at once, without loading
TensorFlow's graph again, its LiteRT compilation kept. (On KServe a rollback is another
``storageUri``: new pods, which load it afresh.)

TensorFlow (3-4 s of CPU to import) is imported when the first version is loaded, through
``core.tf_start.configure`` (Keras 2, its native start-up lines kept off the terminal): a
server with no version yet, ``retrain up``'s before its first promotion, has not imported it.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from core.tf_start import configure
from repository.digest import model_digest
from repository.layout import ARRAYS_SIGNATURE, BYTES_SIGNATURE, OUTPUT, versions
from services.serving.compile_apart import CompileWorker
from services.serving.decode import UndecodableError, decode_plain_pngs, is_plain_png28
from services.serving.errors import BadRequestError, ModelNotReadyError

if TYPE_CHECKING:  # TensorFlow's: imported when the first version loads
    from services.serving.lite import CompiledModel

log = logging.getLogger(__name__)
KEPT = 2  # versions served before the current one, kept loaded for a fast way back


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported (configured first: ``core.tf_start``) on the first call."""
    configure()
    import tensorflow as tf

    return tf


@dataclass
class LoadedModel:
    version: int
    path: str
    serve_bytes: object
    serve_arrays: object
    saved: object = field(default=None, repr=False)  # the loaded SavedModel: its variables
    # serve_arrays traced into a function taking the images positionally: calling it costs
    # ~0.15 ms less than the signature's keyword call (its argument binding), per model call
    arrays_direct: object | None = None
    compile_after: int | None = None  # model calls before compiling for LiteRT (None: never)
    compiler: CompileWorker | None = None  # what compiles it then (None: this process)
    compiled: CompiledModel | None = None
    calls: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    digest: str | None = None  # the files' digest (repository.digest), when it could be read

    def predict_bytes(self, images: list[bytes]) -> np.ndarray:
        """Plain 28x28 grayscale PNGs decoded here (``decode``) and given to the arrays
        signature; the rest, and any batch with an image libspng cannot read, through the
        model's own decoding signature."""
        plain = [n for n, image in enumerate(images) if is_plain_png28(image)]
        if not plain:
            return self._decode_and_predict(images)
        try:
            fast = self.predict_arrays(decode_plain_pngs([images[n] for n in plain]))
        except UndecodableError:  # damaged: the model's decoder words the error
            return self._decode_and_predict(images)
        if len(plain) == len(images):
            return fast
        probs = np.empty((len(images), fast.shape[1]), fast.dtype)
        probs[plain] = fast
        others = np.setdiff1d(np.arange(len(images)), plain)
        probs[others] = self._decode_and_predict([images[n] for n in others])
        return probs

    def _decode_and_predict(self, images: list[bytes]) -> np.ndarray:
        import tensorflow as tf  # imported by ``load``, which made this model

        try:
            out = self.serve_bytes(image_bytes=tf.constant(images))  # type: ignore[operator]
        except tf.errors.InvalidArgumentError as exc:
            raise BadRequestError(f"cannot decode image bytes: {exc.message.splitlines()[0]}") from None
        return out[OUTPUT].numpy()

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        if next(self.calls) == self.compile_after and self.compiled is None:  # one thread draws it
            threading.Thread(target=self.compile, args=(self.compiler,),
                             name=f"compile-v{self.version}", daemon=True).start()
        compiled = self.compiled
        if compiled is not None:
            return compiled.predict(images)
        import tensorflow as tf  # imported by ``load``, which made this model

        if self.arrays_direct is not None:
            return self.arrays_direct(tf.constant(images, tf.float32)).numpy()  # type: ignore[operator]
        out = self.serve_arrays(images=tf.constant(images, tf.float32))  # type: ignore[operator]
        return out[OUTPUT].numpy()

    def compile(self, worker: CompileWorker | None = None) -> None:
        """Compile for LiteRT and warm it (about a second; by ``worker``, in its process,
        without holding up the requests another version answers meanwhile); its model calls
        go there once done. A model LiteRT cannot take stays on TensorFlow, said once."""
        from services.serving.lite import CompiledModel

        started = time.perf_counter()
        try:
            if worker is not None:
                self.compiled = worker.compile(Path(self.path))
            elif self.saved is not None:  # from the signature loaded: no second load of files
                self.compiled = CompiledModel.convert(self.serve_arrays, self.saved)
            else:
                self.compiled = CompiledModel.compile(Path(self.path))
        except Exception as exc:  # an op LiteRT lacks, say: TensorFlow goes on answering
            if worker is not None and worker.closed:  # the server is stopping: not a verdict
                log.info("version %d not compiled: the server is stopping", self.version)
                return
            if not getattr(exc, "passing", False):  # refused: never tried again
                self.compile_after = None
            log.warning("version %d stays on TensorFlow: LiteRT cannot compile it: %s",
                        self.version, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        log.info("version %d compiled for LiteRT in %.2fs; its model calls go there now",
                 self.version, time.perf_counter() - started)

    def predict(self, kind: str, parts: list[list[bytes] | np.ndarray]) -> np.ndarray:
        """One model call for the inputs of one or more requests of the same kind ("bytes":
        encoded images, "arrays": 28x28 floats), in order."""
        if kind == "bytes":
            return self.predict_bytes([b for part in parts for b in part])
        return self.predict_arrays(np.concatenate(parts))  # type: ignore[arg-type]


def load(path: Path, version: int, compile_after: int | None = None,
         digest: str | None = None, compile_now: bool = False,
         worker: CompileWorker | None = None) -> LoadedModel:
    """The version in ``path``, warmed (and with ``compile_now``, compiled for LiteRT and
    warmed there, by ``worker`` when given) before it takes traffic."""
    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(path))
    arrays = loaded.signatures[ARRAYS_SIGNATURE]
    direct = tf.function(lambda images: arrays(images=images)[OUTPUT])
    model = LoadedModel(version, str(path), loaded.signatures[BYTES_SIGNATURE], arrays, loaded,
                        direct.get_concrete_function(tf.TensorSpec([None, 28, 28], tf.float32)),
                        # compiled at load, ``compile_after`` stays: a compile that failed
                        # for a passing reason (the worker killed, a timeout on a busy node)
                        # is tried once more after ``compile_after`` model calls, by the same
                        # worker (that try is the last); a refusal is final
                        compile_after, worker, digest=digest)
    # warm up before taking traffic: TensorFlow's call either way (the fallback), then LiteRT
    model.predict_arrays(np.zeros((1, 28, 28), np.float32))
    if compile_now:
        model.compile(worker)
    return model


def relabelled(model: LoadedModel, version: int, path: Path) -> LoadedModel:
    """``model`` answering as ``version`` from ``path`` (the same files): its loaded graph and
    its LiteRT compilation shared (its count of calls too, so it is not compiled twice; one
    not compiled yet is compiled on its own calls)."""
    calls = model.calls if model.compiled is not None else itertools.count(1)
    return replace(model, version=version, path=str(path), calls=calls)


def _digest(path: Path) -> str | None:
    try:
        return model_digest(path)
    except OSError as exc:  # unreadable: loaded (or refused) as any version, not matched
        log.warning("cannot read the files of %s: %s", path, exc)
        return None


class ModelHolder:
    """Holds the serving version; a new one is loaded and warmed aside, then swapped in. The
    last ``KEPT`` versions served before it stay loaded (``kept``, latest first). With
    ``compile_at_load``, the worker that compiles replacing versions is ``compiler``, started
    once the first version serves (``worker_ahead``; else by the first version to replace
    one, if any comes: a KServe predictor's pod serves one release). ``start_tensorflow``
    runs once, when the first version is about to load: it imports TensorFlow (through
    ``core.tf_start``), and does what must come before TensorFlow's first op."""

    def __init__(self, model_dir: Path, compile_after: int | None = None,
                 compile_at_load: bool = False, worker_ahead: bool = True,
                 start_tensorflow: Callable[[], object] = import_tensorflow) -> None:
        self.model_dir = model_dir
        self.compile_after = compile_after
        self.compile_at_load = compile_at_load
        self._current: LoadedModel | None = None
        self._kept: list[LoadedModel] = []
        self._lock = threading.Lock()
        self._unloadable: set[int] = set()
        self.loaded_at: float | None = None
        self.loads = 0  # versions loaded with TensorFlow (a swap to a kept one is not a load)
        self.compiler = CompileWorker() if compile_at_load else None
        self.worker_ahead = worker_ahead
        self._start_tensorflow: Callable[[], object] | None = start_tensorflow
        self._tensorflow_failed_at = -math.inf  # when its failure was last said
        self._tensorflow_error: str | None = None

    def close(self) -> None:
        """End the compile worker (the server stops)."""
        if self.compiler is not None:
            self.compiler.close()

    @property
    def served_version(self) -> int | None:
        """The version answering now, or None before one is loaded."""
        model = self._current
        return None if model is None else model.version

    @property
    def kept(self) -> list[int]:
        """The versions kept loaded besides the current one, latest first."""
        return [m.version for m in self._kept]

    @property
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReadyError("no model version is loaded yet")
        return model

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def broken(self) -> str | None:
        """Why this server can serve no version, whatever is published (TensorFlow cannot
        start: a broken install); None while it can. The liveness answers say so."""
        return self._tensorflow_error

    @property
    def compiled(self) -> bool:
        """Whether the served version's model calls run on LiteRT."""
        model = self._current
        return model is not None and model.compiled is not None

    def refresh(self) -> int | None:
        """Serve the newest loadable version; returns the version served (None: nothing yet).

        A version that fails to load is remembered and not tried again; the server keeps
        serving what it had. If the served version's folder disappears and no other is there,
        the server stops serving (as TF Serving unloads a removed version).
        """
        with self._lock:
            current = self._current
            candidates = [v for v in versions(self.model_dir) if v not in self._unloadable]
            if not candidates:
                if current is not None and not Path(current.path).exists():
                    self._current = current = None
                return current.version if current else None
            newest = candidates[-1]
            if current is not None and current.version == newest:
                return newest
            path = self.model_dir / str(newest)
            digest = _digest(path)
            same = next((m for m in (current, *self._kept)
                         if m is not None and digest is not None and m.digest == digest), None)
            if same is not None:  # a model served before, published again (a rollback)
                self._swap(relabelled(same, newest, path))
                log.info("serving version %d: the files of version %d, still loaded", newest,
                         same.version)
                return newest
            # compiled before the swap, its first answer is as fast as its predecessor's last
            # (and the live guard compares like with like: no compilation in its window);
            # without compile_at_load, only a version replacing one under traffic is
            compile_now = self.compile_at_load or (current is not None and bool(self.compile_after))
            if not self._tensorflow_started():
                return current.version if current else None
            try:  # by the worker: a version answers meanwhile, the converter would hold it up
                started = time.perf_counter()
                model = load(path, newest, self.compile_after, digest, compile_now,
                             self.compiler if current is not None else None)
            except Exception as exc:  # a broken version must not take the server down
                self._unloadable.add(newest)
                log.error("version %d cannot be loaded, skipping it: %s", newest, exc)
                return current.version if current else None
            self.loads += 1
            self._swap(model)
            if current is None and self.compiler is not None and self.worker_ahead:
                self.compiler.start()  # TensorFlow imported by the time the next one comes
            log.info("serving version %d (loaded%s and warmed in %.2fs)", newest,
                     ", compiled" if model.compiled is not None else "",
                     time.perf_counter() - started)
            return newest

    def _tensorflow_started(self) -> bool:
        """(Under the lock.) ``start_tensorflow``, before the first version loads; False when
        TensorFlow cannot start (a broken install): no version is blamed for it, the server
        says it is not live (Kubernetes restarts it, as it did when this failed at start),
        and it is tried again at the next refresh (said at the first failure, then once a
        minute)."""
        if self._start_tensorflow is None:
            return True
        try:
            self._start_tensorflow()
        except Exception as exc:
            self._tensorflow_error = f"TensorFlow cannot start: {exc}"
            now = time.monotonic()
            if now - self._tensorflow_failed_at >= 60:
                self._tensorflow_failed_at = now
                log.error("TensorFlow cannot start, so no version can be loaded (tried again "
                          "at each poll): %s", exc)
            return False
        self._start_tensorflow = self._tensorflow_error = None
        return True

    def _swap(self, model: LoadedModel) -> None:
        """(Under the lock.) Serve ``model``; the one it replaces joins the kept versions (one
        per set of files, at most ``KEPT``). In-flight requests keep their reference to the
        model they were given."""
        previous = self._current
        if previous is not None:
            kept = [previous, *(m for m in self._kept if m.digest is None
                                or m.digest != previous.digest)]
            self._kept = [m for m in kept if m.digest is None or m.digest != model.digest][:KEPT]
        self._current = model
        self.loaded_at = time.time()
