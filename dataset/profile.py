"""The profile of ingested data: what the data gate (``dataset.validation``) compares.

Computed in the ingestion pass, batch by batch, from the arrays being written (the data is
not read a second time), and stored beside each unit's shards (``shards/<unit>/profile.npz``),
so a dataset that reuses a unit reuses its profile, and a cache hit reuses them all. A unit's
profile holds:

- ``labels``: each image's label, in record order (labels outside the known classes too);
- ``hashes``: a 64-bit content hash of each image's pixels (duplicates, train/test overlap);
- ``pixels``: per image, a histogram of its pixel intensities in ``BINS`` bins, from every
  ``STRIDE``-th pixel (9 is prime to the row width of 28, so every column and every row is
  sampled; a ninth of the pixels gives the same shape at a ninth of the cost). Summed over a
  class's images, the class's histogram, over any subset: the images new since a reference.

Images are always 28x28 uint8 here: ingestion refuses any other shape.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import idx
from dataset.store import load_metadata

PROFILE_FILE = "profile.npz"
BINS = 16
STRIDE = 9
SHAPE = (idx.ROWS, idx.COLS)
DTYPE = "uint8"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@functools.lru_cache(maxsize=1)
def _multipliers() -> np.ndarray:
    """Fixed odd 64-bit multipliers, one per 8-byte word of an image."""
    words = idx.ROWS * idx.COLS // 8
    return np.random.default_rng(0x5EED).integers(1, 2**63, words, dtype=np.uint64) | np.uint64(1)


def image_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each image's pixels (uint64, one per image): a multiply-sum over the
    image's 8-byte words, then a splitmix64 finaliser. Equal images hash equal; unequal ones
    collide with odds of about 2**-64 per pair (not a defence against crafted collisions)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1)).view(np.uint64)
    with np.errstate(over="ignore"):
        h = flat @ _multipliers()
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h & _MASK


def pair_keys(hashes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What identifies a labelled image: its hash mixed with its label (a relabelled image
    is a new pair)."""
    with np.errstate(over="ignore"):
        return hashes ^ (labels.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def member(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Which of ``values`` (uint64 hashes) are among ``known``: a sort and a binary search
    (``np.isin`` goes through a hash table ten times slower on 70,000 hashes)."""
    if not known.size or not values.size:
        return np.zeros(values.shape, bool)
    ordered = np.sort(known)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    return ordered[at] == values


def repeats(values: np.ndarray) -> int:
    """How many of ``values`` repeat an earlier one."""
    ordered = np.sort(values)
    return int((ordered[1:] == ordered[:-1]).sum())


class Profiler:
    """Accumulates one unit's profile as ingestion writes its batches."""

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._pixels: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        n = len(images)
        self._labels.append(labels.astype(np.uint8, copy=False))
        self._hashes.append(image_hashes(images))
        sampled = images.reshape(n, -1)[:, ::STRIDE] >> 4  # BINS = 256 >> 4
        codes = np.arange(n, dtype=np.intp)[:, None] * BINS + sampled
        counts = np.bincount(codes.ravel(), minlength=n * BINS).reshape(n, BINS)
        self._pixels.append(counts.astype(np.uint8))  # at most 88 sampled pixels per image

    def unit(self, unit: str, split: str) -> UnitProfile:
        """The profile accumulated so far, as the unit ``unit`` of ``split``."""
        def joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(parts) if parts else empty

        return UnitProfile(unit, split, joined(self._labels, np.zeros(0, np.uint8)),
                           joined(self._hashes, np.zeros(0, np.uint64)),
                           joined(self._pixels, np.zeros((0, BINS), np.uint8)))

    def save(self, folder: Path, *, unpublished: bool = False) -> None:
        """Write the profile into ``folder``, whole or not at all (a hidden name, then a
        rename: a reader never sees half of one); straight to its name in an ``unpublished``
        folder, which no reader sees before it is renamed (an ingestion's new unit)."""
        done = self.unit(folder.name, "")
        tmp = folder / (PROFILE_FILE if unpublished else f".{PROFILE_FILE}.{uuid.uuid4().hex[:8]}")
        with tmp.open("wb") as handle:
            np.savez(handle, labels=done.labels, hashes=done.hashes, pixels=done.pixels)
        if not unpublished:
            os.replace(tmp, folder / PROFILE_FILE)


@dataclass(frozen=True)
class UnitProfile:
    unit: str
    split: str
    labels: np.ndarray  # uint8, one per image
    hashes: np.ndarray  # uint64, one per image
    pixels: np.ndarray  # uint8 [n, BINS]: each image's sampled pixel intensities


@dataclass(frozen=True)
class Images:
    """Some images of a profile: their labels, hashes and pixel histograms."""

    labels: np.ndarray
    hashes: np.ndarray
    pixels: np.ndarray

    @property
    def size(self) -> int:
        return int(self.labels.size)

    def pairs(self) -> np.ndarray:
        return pair_keys(self.hashes, self.labels)

    def counts(self) -> np.ndarray:
        """Images per known class."""
        return np.bincount(self.labels, minlength=idx.NUM_CLASSES)[:idx.NUM_CLASSES]

    def class_hist(self) -> np.ndarray:
        """Per known class, the pixel-intensity histogram of its images (int64 [10, BINS])."""
        out = np.zeros((idx.NUM_CLASSES, BINS), np.int64)
        for c in range(idx.NUM_CLASSES):
            out[c] = self.pixels[self.labels == c].sum(axis=0, dtype=np.int64)
        return out


Marks = dict[str, np.ndarray]  # unit id -> which of its images are meant


@dataclass(frozen=True)
class Profile:
    """A dataset's profile: its units' profiles, in the dataset's order."""

    key: str
    digest: str
    units: tuple[UnitProfile, ...]

    def images(self, split: str, only: Marks | None = None) -> Images:
        """A split's images; with ``only``, just those it marks (units it does not name: none)."""
        parts = [u for u in self.units if u.split == split and (only is None or u.unit in only)]
        picks = [slice(None) if only is None else only[u.unit] for u in parts]
        if not parts:
            return Images(np.zeros(0, np.uint8), np.zeros(0, np.uint64),
                          np.zeros((0, BINS), np.uint8))
        return Images(np.concatenate([u.labels[p] for u, p in zip(parts, picks, strict=True)]),
                      np.concatenate([u.hashes[p] for u, p in zip(parts, picks, strict=True)]),
                      np.concatenate([u.pixels[p] for u, p in zip(parts, picks, strict=True)]))

    def pairs(self) -> np.ndarray:
        """Every labelled image's pair key (``pair_keys``), all splits."""
        if not self.units:
            return np.zeros(0, np.uint64)
        return np.concatenate([pair_keys(u.hashes, u.labels) for u in self.units])

    def splits(self) -> list[str]:
        return sorted({u.split for u in self.units})

    def unit_ids(self) -> frozenset[str]:
        return frozenset(u.unit for u in self.units)

    def summary(self) -> dict[str, object]:
        """Per split: image count, count of each label, shape and type (what a report shows)."""
        out: dict[str, object] = {}
        for name in self.splits():
            labels = self.images(name).labels
            counts = np.bincount(labels, minlength=idx.NUM_CLASSES)
            out[name] = {"images": int(labels.size), "per_class": counts[:idx.NUM_CLASSES].tolist(),
                         "unknown_labels": int(counts[idx.NUM_CLASSES:].sum()),
                         "shape": list(SHAPE), "dtype": DTYPE}
        return out


def load(dataset_uri: str | Path) -> Profile:
    """The profile of an ingested dataset, from its units' stored profiles."""
    folder = Path(dataset_uri)
    meta = load_metadata(folder)
    store = folder.parent.parent
    units = []
    for unit in meta["units"]:  # type: ignore[union-attr]
        path = store / "shards" / unit["id"] / PROFILE_FILE
        if not path.is_file():
            rebuild(store, unit["id"])
        with np.load(path) as data:
            units.append(UnitProfile(unit["id"], unit["split"], data["labels"],
                                     data["hashes"], data["pixels"]))
    return Profile(str(meta["key"]), str(meta["digest"]), tuple(units))


def rebuild(store: Path, unit: str) -> None:
    """The profile of a unit ingested before profiles existed (a champion's dataset from an
    older retrain, say), from its shards, written beside them as ingestion would have."""
    from dataset.example import read_labelled_unit

    images, labels = read_labelled_unit(store, unit)
    profiler = Profiler()
    for start in range(0, len(images), idx.BATCH):
        profiler.add(images[start:start + idx.BATCH], labels[start:start + idx.BATCH])
    profiler.save(store / "shards" / unit)
