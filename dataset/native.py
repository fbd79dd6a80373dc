"""An increment's per-file work in C, where the optional extension was built.

A 1,000-image push costs ingestion little per file, but in Python that little is paid 1,000
times under one interpreter lock: a ``stat`` in the fingerprint's walk and its listing
again by the layout, an ``open``, ``read`` and ``close``, zlib and libspng (~20 µs), the
chunk checks. ``dataset/_native.c`` and ``_native_scan.c`` do it for a whole batch, on up to
``THREADS`` threads without the lock:

- ``scan``: the fingerprint's walk, every file ``stat``'ed (``fingerprint._walk``'s results);
- ``list_files``: an increment's class folders listed (``layout._files_under``'s results);
- ``read_files``: each file's bytes in one read, as ``read_small`` reads them;
- ``decode_png28``: the plainest 28x28 grayscale PNGs (signature and IHDR, IDAT chunks, an
  empty IEND ending the file; every CRC and the zlib stream's Adler-32 right), inflated by
  zlib as libspng and Pillow inflate it, to the same pixels. Every other image is left to
  ``dataset.png`` and the decoders after it, which also word the errors.

Where the extension is missing (no C compiler or headers when the package was installed, or
a build from older sources), the same is done in Python, with the same results;
``available()`` says which.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ABI = 2  # NATIVE_ABI in dataset/_native.h: a build from older sources is not used
try:
    from dataset import _native
except ImportError:  # not built: the Python path below
    _native = None
if getattr(_native, "ABI", None) != ABI:  # a stale build left in the tree
    _native = None


def available() -> bool:
    """Whether the C extension does the work (else this module's Python)."""
    return _native is not None


SIDE = 28
# the threads a batch uses: the CPUs this process may run on, up to 4 (past 2 the small
# files' system calls, not the CPU, bound it)
_CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
THREADS = max(1, min(len(_CPUS), 4))


def scan(root: str, ignored_suffixes: tuple[str, ...]) -> list[tuple[str, str, int, int, int]]:
    """(relative path, path, size, mtime_ns, inode) of every dataset file under ``root``, as
    ``dataset.fingerprint._walk`` finds them (the C path; that function is the Python one)."""
    return _native.scan(root, ignored_suffixes, THREADS)  # type: ignore[union-attr]


def list_files(folder: str, prefix: str) -> list[tuple[str, bool]]:
    """(prefix/relative path, is a link) of every entry below ``folder`` but folders, links
    to folders and hidden entries, sorted: ``dataset.layout._files_under`` (the C path; that
    function is the Python one)."""
    return _native.list_files(folder, prefix)  # type: ignore[union-attr]


def read_files(paths: list[str], sizes: list[int]) -> list[bytes | int]:
    """Each file's bytes, read as ``read_small`` reads them, or the ``errno`` its open or
    read failed with."""
    if _native is not None and 0 <= min(sizes, default=0) \
            and max(sizes, default=0) <= _C_READ_MAX:
        return _native.read_files(paths, sizes, THREADS)
    return [_read(path, size) for path, size in zip(paths, sizes, strict=True)]


_C_READ_MAX = 16 << 20  # the C reader's bound on a file's size (a batch of larger: in Python)


_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO put there meanwhile: no wait
# no access time written (a metadata write per new file), where we may ask for that: not
# asked again once refused (files another user owns), so that each file costs one open
_no_atime = getattr(os, "O_NOATIME", 0)


def read_small(path: str, size: int) -> bytes:
    """A small file's bytes in one read of its stat'ed ``size`` + 1 (a file that grew
    meanwhile reads longer than its size), with no file object: a push is thousands of small
    files, and each system call counts."""
    global _no_atime
    try:
        fd = os.open(path, _FLAGS | _no_atime)
    except PermissionError as exc:
        if exc.errno != errno.EPERM or not _no_atime:
            raise
        _no_atime = 0  # not the file's owner
        fd = os.open(path, _FLAGS)
    try:
        return os.read(fd, size + 1)
    finally:
        os.close(fd)


def _read(path: str, size: int) -> bytes | int:
    try:
        return read_small(path, size)
    except OSError as exc:
        return exc.errno or 0


def decode_png28(datas: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 28, 28) uint8, decoded (N,) bool): the images of ``datas`` this module
    decodes; the rows of the others are left unset, for the caller's other decoders."""
    import numpy as np  # here: the fingerprint (a watcher, `cache` commands) needs no numpy
    pixels = np.empty((len(datas), SIDE, SIDE), np.uint8)
    if _native is None or not datas:
        return pixels, np.zeros(len(datas), bool)
    decoded = _native.decode_png28(datas, pixels, THREADS)
    return pixels, np.frombuffer(decoded, np.bool_)
