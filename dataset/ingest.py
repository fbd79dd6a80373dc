"""Ingestion: validate the source layout, write TFRecord shards, publish atomically.

Shards derived from a source unit (a split's IDX pair, or one increment) are stored under a
hash of that unit's file hashes, so a dataset version that adds one increment ingests only
the increment. Everything is written under a hidden temporary name and published by
rename: a crash at any point leaves no visible partial dataset.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from blake3 import blake3

from dataset import idx, jpeg, native, png
from dataset.errors import DatasetNotFoundError, DatasetValidationError
from dataset.example import records as _records
from dataset.fingerprint import Fingerprint, hash_file
from dataset.image_header import size_problem
from dataset.layout import IdxPair, ImageFolder, Unit, discover
from dataset.profile import Profiler
from dataset.store import TMP_PREFIX, stat_signature
from dataset.tfrecord import TFRecordFile

log = logging.getLogger(__name__)

CODE_VERSION = "ingest-v3"  # bump whenever the shard format, parsing or profile changes
SHARD_SIZE = 10_000


@dataclass(frozen=True)
class IngestResult:
    dataset_uri: str
    digest: str
    records: dict[str, int]
    per_class: dict[str, list[int]]
    reused_units: int
    new_units: int
    seconds: float
    units_ingested: tuple[str, ...] = ()  # the units written by this ingestion
    units_reused: tuple[str, ...] = ()  # the units an earlier ingestion had written


class _ShardWriter:
    """Writes records into numbered TFRecord shards of at most ``shard_size`` records."""

    def __init__(self, folder: Path, shard_size: int) -> None:
        self._folder = folder
        self._shard_size = shard_size
        self._writer: TFRecordFile | None = None
        self._in_shard = 0
        self.names: list[str] = []
        self.count = 0
        self.per_class = [0] * idx.NUM_CLASSES  # known classes only: the profile has the rest
        self.profile = Profiler()

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        records = _records(images, labels)
        done = 0
        while done < len(records):
            if self._writer is None or self._in_shard >= self._shard_size:
                self._roll()
            take = min(self._shard_size - self._in_shard, len(records) - done)
            self._writer.write(records[done:done + take])  # type: ignore[union-attr]
            self._in_shard += take
            done += take
        self.count += len(records)
        counts = np.bincount(labels, minlength=idx.NUM_CLASSES)[:idx.NUM_CLASSES]
        self.per_class = [a + int(b) for a, b in zip(self.per_class, counts, strict=True)]
        self.profile.add(images, labels)

    def _roll(self) -> None:
        self.close()
        name = f"shard-{len(self.names):05d}.tfrecord"
        self.names.append(name)
        self._writer = TFRecordFile(self._folder / name)
        self._in_shard = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def unit_id(unit: Unit, hashes: dict[str, str], shard_size: int) -> str:
    hasher = blake3()
    hasher.update(f"{CODE_VERSION}\n{shard_size}\n{type(unit).__name__}\n{unit.split}\n".encode())
    if isinstance(unit, ImageFolder):  # one update of every line: 1,000s of images
        hasher.update("".join(f"{label}\t{hashes[path]}\n" for path, label in unit.images).encode())
    else:
        hasher.update("".join(f"{hashes[path]}\n" for path in unit.files).encode())
    return hasher.hexdigest()[:32]


def _batches(root: Path, unit: Unit, contents: Mapping[str, bytes],
             sizes: Mapping[str, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if isinstance(unit, IdxPair):
        labels = idx.read_labels(root / unit.labels, known_only=False)
        declared = idx.image_count(root / unit.images)
        if declared != len(labels):
            raise idx.IdxError(
                unit.images, f"holds {declared} images but {unit.labels} holds {len(labels)} labels"
            )
        offset = 0
        for images in idx.iter_images(root / unit.images):  # checks the data matches its header
            yield images, labels[offset : offset + len(images)]
            offset += len(images)
        return
    yield from _folder_batches(root, unit, contents, sizes)


def _pillow_decode(path: str, data: bytes) -> tuple[np.ndarray | None, str | None]:
    """The reference decoder: every image the fast path does not take, and every error's
    wording."""
    from PIL import Image, UnidentifiedImageError

    # before Pillow allocates what the header declares (a header it cannot read, Pillow words)
    problem = size_problem(data, unknown_is_a_problem=False)
    if problem is not None:
        return None, f"{path}: the image {problem}"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (idx.COLS, idx.ROWS):
                return None, f"{path}: image is {img.size[0]}x{img.size[1]}, expected 28x28"
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8), None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:
        return None, f"{path}: not a decodable PNG/JPEG image ({exc})"


def _read_unkept(root: Path, paths: list[str], sizes: Mapping[str, int],
                 problems: list[str]) -> dict[str, bytes]:
    """The files the fingerprint did not keep, read in one batch (``native.read_files``) at
    the size it found: one that changed since, or cannot be read, is a problem."""
    base = str(root)
    read = native.read_files([os.path.join(base, p) for p in paths], [sizes[p] for p in paths])
    got: dict[str, bytes] = {}
    for path, data in zip(paths, read, strict=True):
        if type(data) is int:
            problems.append(f"{path}: cannot be read ({os.strerror(data)})")
        elif len(data) != sizes[path]:
            problems.append(f"{path}: changed since the dataset was fingerprinted")
        else:
            got[path] = data
    return got


def _decode_batch(root: Path, items: list[tuple[str, int]], problems: list[str],
                  contents: Mapping[str, bytes],
                  sizes: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch of class-folder images in order: the plainest PNGs all at once in C
    threads (dataset.native, where built), the other 28x28 grayscale PNGs with libspng
    (dataset.png), 28x28 grayscale JPEGs with libjpeg-turbo (dataset.jpeg), everything else
    with Pillow. An image's bytes are those the fingerprint read (``contents``) when it kept
    them, so each new file is read once; the others are read here, at the fingerprinted
    ``sizes``."""
    read = _read_unkept(root, [path for path, _ in items if path not in contents], sizes,
                        problems)
    datas: list[bytes] = []
    for path, _ in items:
        data = contents.get(path)
        datas.append(read.get(path, b"") if data is None else data)  # b"": a problem said
    images, decoded = native.decode_png28(datas)
    kept = decoded.copy()
    for i in np.flatnonzero(~decoded):
        if items[i][0] not in contents and items[i][0] not in read:
            continue  # not read: its problem is said
        data = datas[i]
        pixels = png.decode_gray28(data)
        if pixels is None:
            pixels = jpeg.decode_gray28(data)
        if pixels is None:
            pixels, problem = _pillow_decode(items[i][0], data)
            if problem:
                problems.append(problem)
                continue
        images[i] = pixels
        kept[i] = True
    labels = np.fromiter((label for _, label in items), np.uint8, len(items))
    return images[kept], labels[kept]


def _folder_batches(root: Path, unit: ImageFolder, contents: Mapping[str, bytes],
                    sizes: Mapping[str, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    problems: list[str] = []
    for start in range(0, len(unit.images), idx.BATCH):
        images, labels = _decode_batch(root, list(unit.images[start:start + idx.BATCH]),
                                       problems, contents, sizes)
        if len(images) and not problems:
            yield images, labels
    if problems:
        raise DatasetValidationError(problems)


def _write_unit(root: Path, unit: Unit, tmp: Path, shard_size: int,
                contents: Mapping[str, bytes], sizes: Mapping[str, int]) -> dict[str, object]:
    tmp.mkdir(parents=True)
    writer = _ShardWriter(tmp, shard_size)
    try:
        for images, labels in _batches(root, unit, contents, sizes):
            writer.write(images, labels)
    finally:
        writer.close()
    if writer.count == 0:
        raise idx.IdxError(unit.files[0], "holds no records")
    writer.profile.save(tmp, unpublished=True)
    shards = [{"name": n, "size": (tmp / n).stat().st_size, "blake3": hash_file(tmp / n),
               "stat": stat_signature(tmp / n)} for n in writer.names]
    meta = {
        "split": unit.split,
        "files": list(unit.files) if isinstance(unit, IdxPair) else [unit.batch],
        "count": writer.count,
        "per_class": writer.per_class,
        "shards": shards,
    }
    (tmp / "unit.json").write_text(json.dumps(meta, indent=1))
    return meta


def ingest(
    root: Path,
    store: Path,
    fp: Fingerprint,
    *,
    dataset_key: str,
    shard_size: int = SHARD_SIZE,
) -> IngestResult:
    """Ingest ``root`` (fingerprinted as ``fp``) into ``store/datasets/<dataset_key>``.

    Raises ``DatasetValidationError`` naming every problem; nothing is published then.
    """
    started = time.perf_counter()
    if not root.is_dir():
        raise DatasetNotFoundError(str(root))
    layout = discover(root)
    problems = list(layout.problems)
    hashes = {path: digest for path, _, digest in fp.files}
    sizes = {path: size for path, size, _ in fp.files}
    shards_root = store / "shards"
    shards_root.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []  # each new unit, written under a hidden name beside
    # where it is published (shards/.tmp-*: clean_temporaries removes what a crash leaves)
    units_meta: list[dict[str, object]] = []
    reused: list[str] = []
    try:
        for unit in layout.units:
            missing = [p for p in unit.files if p not in hashes]
            if missing:
                problems.append(f"{missing[0]}: changed since the dataset was fingerprinted")
                continue
            uid = unit_id(unit, hashes, shard_size)
            final = shards_root / uid
            if (final / "unit.json").is_file():
                meta = json.loads((final / "unit.json").read_text())
                os.utime(final / "unit.json")  # recently used: `cache gc` keeps it
                reused.append(uid)
            else:
                tmp = shards_root / f"{TMP_PREFIX}{uid}-{uuid.uuid4().hex[:8]}"
                pending.append((tmp, final))
                try:
                    meta = _write_unit(root, unit, tmp, shard_size, fp.contents, sizes)
                except idx.IdxError as exc:
                    problems.append(str(exc))
                    continue
                except DatasetValidationError as exc:
                    problems.extend(exc.problems)
                    continue
            units_meta.append({"id": uid, **meta})
        if problems:
            raise DatasetValidationError(problems)
        for tmp, final in pending:  # publish shards: each rename is atomic
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "unit.json").is_file():  # a concurrent run did not publish it
                    raise
        result = _publish_dataset(store, dataset_key, fp, units_meta, shard_size)
    finally:
        for tmp, _ in pending:  # unpublished: a problem, or a concurrent run published it
            shutil.rmtree(tmp, ignore_errors=True)  # (gone once renamed)
    seconds = time.perf_counter() - started
    log.info(
        "ingested %s: %s records, %d unit(s) reused, %d new, %.2fs",
        dataset_key[:12], result[0], len(reused), len(pending), seconds,
    )
    records, per_class, uri = result
    return IngestResult(uri, fp.digest, records, per_class, len(reused), len(pending), seconds,
                        tuple(final.name for _, final in pending), tuple(reused))


def _json(value: object) -> bytes:
    """``value`` as compact JSON: with orjson, several times faster than json for the manifest
    of every file (20,000 files: 20 ms); with json where orjson refuses (a file name that is
    not UTF-8, kept as surrogates: json escapes them)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":")).encode()


def _publish_dataset(
    store: Path, key: str, fp: Fingerprint, units: list[dict[str, object]], shard_size: int
) -> tuple[dict[str, int], dict[str, list[int]], str]:
    splits: dict[str, dict[str, object]] = {}
    for unit in units:
        split = splits.setdefault(
            str(unit["split"]), {"count": 0, "per_class": [0] * idx.NUM_CLASSES, "shards": []}
        )
        split["count"] = int(split["count"]) + int(unit["count"])  # type: ignore[call-overload]
        split["per_class"] = [a + b for a, b in zip(split["per_class"], unit["per_class"], strict=True)]  # type: ignore[call-overload]
        split["shards"].extend(  # type: ignore[union-attr]
            {"path": f"shards/{unit['id']}/{s['name']}", "size": s["size"], "blake3": s["blake3"],
             "stat": s.get("stat")}
            for s in unit["shards"]  # type: ignore[union-attr]
        )
    metadata = {
        "key": key,
        "digest": fp.digest,
        "code_version": CODE_VERSION,
        "shard_size": shard_size,
        "created_at": time.time(),
        "splits": splits,
        "units": [{"id": u["id"], "split": u["split"], "files": u["files"]} for u in units],
        "manifest": [[f.path, f.size, f.hash] for f in fp.files],
    }
    datasets = store / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    final = datasets / key
    if not (final / "metadata.json").is_file():
        tmp = datasets / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        (tmp / "metadata.json").write_bytes(_json(metadata))
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "metadata.json").is_file():
                raise
    records = {name: int(s["count"]) for name, s in splits.items()}  # type: ignore[call-overload]
    per_class = {name: list(s["per_class"]) for name, s in splits.items()}  # type: ignore[call-overload]
    return records, per_class, str(final)

