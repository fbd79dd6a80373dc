"""Dataset fingerprints: BLAKE3 over the sorted manifest of (relative path, size, file hash).

A stat cache of (size, mtime_ns, inode) per file means an unchanged dataset is
re-fingerprinted without reading file contents; cost grows with the bytes that changed.
"""

from __future__ import annotations

import errno
import marshal
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

from blake3 import blake3

from dataset import native

CHUNK = 1 << 20
KEEP_FILE = 1 << 16  # an image of the sizes pushed; larger files are streamed when ingested
KEEP_BYTES = 32 << 20  # what one fingerprint keeps of the files it read, at most
READ_BATCH = 1024  # small files read at once: at most 64 MiB in memory
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
_FORMAT = "retrain-statcache-2"  # the first value of each record of a stat cache file


class FileEntry(NamedTuple):  # a tuple: made for every file on every run, at half the cost
    path: str
    size: int
    hash: str


Found = tuple[str, str, int, int, int]  # relative path, path, size, mtime_ns, inode


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    files: tuple[FileEntry, ...]
    # the bytes of the small files read to fingerprint them (path -> bytes, at most
    # KEEP_BYTES in all): the ingestion that follows in this process decodes these very
    # bytes instead of opening each file again; not part of the value
    contents: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def manifest_digest(files: tuple[FileEntry, ...]) -> str:
    """The dataset digest: pure function of the sorted manifest."""
    lines = "".join(f"{path}\t{size}\t{digest}\n"  # by path: a path is listed once
                    for path, size, digest in sorted(files))
    return blake3(lines.encode(errors="surrogateescape")).hexdigest()  # a name's own bytes


def diff(old: Fingerprint | None, new: Fingerprint) -> Changes:
    before = {f.path: f.hash for f in old.files} if old else {}
    after = {f.path: f.hash for f in new.files}
    return Changes(
        added=tuple(sorted(p for p in after if p not in before)),
        changed=tuple(sorted(p for p in after if p in before and before[p] != after[p])),
        removed=tuple(sorted(p for p in before if p not in after)),
    )


def hash_file(path: Path | str, size: int | None = None) -> str:
    if size is not None and size < CHUNK:  # one read for the many small files of a push
        return blake3(native.read_small(str(path), size)).hexdigest()
    with open(path, "rb", buffering=0) as handle:
        hasher = blake3()
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
        return hasher.hexdigest()


def is_dataset_file(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    parts = relative.split("/")
    return not any(p.startswith(".") for p in parts) and not name.endswith(IGNORED_SUFFIXES)


class StatCache:
    """(size, mtime_ns, inode) -> hash per relative path, in a file of records, each its
    length (8 bytes, little-endian) then ``(_FORMAT, {path: entry})`` in marshal's format
    (several times faster than JSON to load: the whole file is read on every run). The first
    record holds every entry; a run that changed some appends one record of those alone (a
    removed path's entry None), so what a run writes grows with what changed, not with the
    dataset. The file is written anew once the entries a run would load (kept, replaced or
    removed) pass 1.25 times those kept: pushes that only add files only append. A record
    that cannot be read (a damaged file, a run killed mid-append, any other format) ends what
    is loaded: the files it covered are hashed once more."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._entries: dict[str, list] = {}  # path -> [size, mtime_ns, inode, hash]
        self._changed: dict[str, list | None] = {}  # since loaded or saved; None: removed
        self._first = self._appended = 0  # entries in the first record, and in those after it
        self._whole = False  # the file must be written anew (unreadable, or none yet)
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = memoryview(path.read_bytes())
        except OSError:
            self._whole = True
            return
        at = 0
        while at < len(data):
            size = int.from_bytes(data[at:at + _LENGTH], "little")
            record = _record(data[at + _LENGTH:at + _LENGTH + size]) \
                if at + _LENGTH + size <= len(data) else None
            if record is None:
                break
            for key, entry in record.items():
                if entry is None:
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = entry
            if at == 0:
                self._first = len(record)
            else:
                self._appended += len(record)
            at += _LENGTH + size
        self._whole = at == 0 or at < len(data)

    def lookup(self, relative: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The hash stored for ``relative`` if its size, mtime and inode are these; an entry
        of any other shape (a damaged file) is a miss, and the file is hashed again."""
        hit = self._entries.get(relative)
        if type(hit) is list and len(hit) == 4 and hit[0] == size and hit[1] == mtime_ns \
                and hit[2] == inode and type(hit[3]) is str:
            return hit[3]
        return None

    def known(self, found: list[Found]) -> list[str | None]:
        """``lookup`` of each file found by ``walk``, in order."""
        lookup = self.lookup
        return [lookup(f[0], f[2], f[3], f[4]) for f in found]

    def store(self, relative: str, size: int, mtime_ns: int, inode: int, digest: str) -> None:
        self._entries[relative] = self._changed[relative] = [size, mtime_ns, inode, digest]

    def store_all(self, found: list[Found], digests: list[str]) -> None:
        """``store`` of each file found by ``walk``, with its hash."""
        stored = {f[0]: [f[2], f[3], f[4], digest] for f, digest in zip(found, digests)}
        self._entries.update(stored)
        self._changed.update(stored)

    def retain(self, paths: set[str]) -> None:
        for key in [k for k in self._entries if k not in paths]:
            del self._entries[key]
            self._changed[key] = None

    def save(self) -> None:
        if self._path is None or not (self._changed or self._whole):
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        loaded = self._first + self._appended + len(self._changed)  # by the next run
        if self._whole or loaded > len(self._entries) * 5 / 4 \
                or not _append(self._path, _framed(self._changed)):
            # a name of its own: concurrent runs may save the same cache; the last rename wins
            tmp = self._path.with_name(f".{self._path.name}.{uuid.uuid4().hex}.tmp")
            try:
                tmp.write_bytes(_framed(self._entries))
                tmp.replace(self._path)
            finally:
                tmp.unlink(missing_ok=True)  # a full disk: no half-written file left
            self._first, self._appended, self._whole = len(self._entries), 0, False
        else:
            self._appended += len(self._changed)
        self._changed = {}


_LENGTH = 8  # a record's length, before it


def _append(path: Path, record: bytes) -> bool:
    """``record`` added in one write with O_APPEND (runs saving at once each add a whole
    record); False when the file is gone (removed since it was loaded) or the write failed or
    fell short (a full disk): the cache is then written anew."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        return os.write(fd, record) == len(record)
    except OSError:  # ENOSPC, EDQUOT: the whole is tried, and says why if it fails too
        return False
    finally:
        os.close(fd)


def _framed(entries: dict) -> bytes:
    data = marshal.dumps((_FORMAT, entries))
    return len(data).to_bytes(_LENGTH, "little") + data


def _record(data: memoryview) -> dict | None:
    """A record's entries, or None where it is not one of ours."""
    try:
        raw = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if isinstance(raw, tuple) and len(raw) == 2 and raw[0] == _FORMAT and isinstance(raw[1], dict):
        return raw[1]
    return None


def walk(root: str) -> list[Found]:
    """Every dataset file under ``root``: hidden entries and IGNORED_SUFFIXES skipped, links to
    files followed, links to folders not entered; stat'ed in C threads where built (this is
    the scan that runs over every file on every run)."""
    if native.available():
        return native.scan(root, IGNORED_SUFFIXES)
    return list(_walk(root, ""))


def _walk(folder: str, prefix: str) -> Iterator[Found]:
    """``walk`` in Python: plain strings and scandir."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return  # removed while we walked; the next scan sees the settled state
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relative = prefix + entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, relative + "/")
            elif entry.is_file() and not entry.name.endswith(IGNORED_SUFFIXES):
                st = entry.stat()
                yield relative, entry.path, st.st_size, st.st_mtime_ns, st.st_ino
        except FileNotFoundError:
            continue


def fingerprint(root: Path, cache: StatCache | None = None,
                keep_contents: bool = True) -> Fingerprint:
    """Fingerprint every dataset file under ``root``, reading only files the cache cannot vouch
    for; ``keep_contents``: keep the small files' bytes for an ingestion that follows in this
    process (a watcher, which only compares digests, keeps none)."""
    cache = cache if cache is not None else StatCache()
    found = walk(str(root))
    known = cache.known(found)
    entries = _entries([f for f, digest in zip(found, known) if digest is not None],
                       [digest for digest in known if digest is not None])
    misses = [f for f, digest in zip(found, known) if digest is None]
    contents = _hash_misses(misses, cache, entries, KEEP_BYTES if keep_contents else 0)
    files = tuple(sorted(entries))  # by path: a path is listed once
    cache.retain({f.path for f in files})
    cache.save()
    return Fingerprint(manifest_digest(files), files, contents)


def _entries(found: list[Found], digests: list[str]) -> list[FileEntry]:
    """The manifest's entries of files found, with their hashes (tuples made in C: a run makes
    one for every file)."""
    return list(map(tuple.__new__, repeat(FileEntry),
                    zip([f[0] for f in found], [f[2] for f in found], digests)))


def _hash_misses(misses: list[Found], cache: StatCache, entries: list[FileEntry],
                 budget: int) -> dict[str, bytes]:
    """Hash the files the cache could not vouch for, adding them to ``entries`` and the cache;
    the small ones are read READ_BATCH at a time (in C threads where built), and kept, up to
    ``budget`` bytes, for the ingestion that follows. A file removed meanwhile is left out."""
    contents: dict[str, bytes] = {}
    for relative, full, size, mtime_ns, inode in misses:
        if size > KEEP_FILE:
            try:
                digest = hash_file(full, size)
            except FileNotFoundError:
                continue
            cache.store(relative, size, mtime_ns, inode, digest)
            entries.append(FileEntry(relative, size, digest))
    small = [m for m in misses if m[2] <= KEEP_FILE]
    for start in range(0, len(small), READ_BATCH):
        batch = small[start:start + READ_BATCH]
        datas = native.read_files([m[1] for m in batch], [m[2] for m in batch])
        if any(type(data) is int for data in datas):
            batch, datas = _read_ones(batch, datas)
        digests = [blake3(data).hexdigest() for data in datas]
        cache.store_all(batch, digests)
        entries.extend(_entries(batch, digests))
        for (relative, _, size, _, _), data in zip(batch, datas):
            if len(data) == size <= budget:  # else being written, or over: not kept
                contents[relative] = data
                budget -= size
    return contents


def _read_ones(batch: list[Found], datas: list[bytes | int]) -> tuple[list[Found], list[bytes]]:
    """The files of ``batch`` that were read, and their bytes: a file removed meanwhile is left
    out; any other failure raises."""
    for found, data in zip(batch, datas, strict=True):
        if type(data) is int and data != errno.ENOENT:
            raise OSError(data, os.strerror(data), found[1])
    read = [(found, data) for found, data in zip(batch, datas) if type(data) is bytes]
    return [found for found, _ in read], [data for _, data in read]  # type: ignore[misc]
