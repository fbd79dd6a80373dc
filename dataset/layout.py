"""The dataset source layout (docs/design.md), discovered from a folder.

``<root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` plus increments under
``increments/<batch>/``: IDX pairs, or class folders of PNG/JPEG images.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dataset import native
from dataset.errors import DatasetNotFoundError, UnsupportedSourceError

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
BASE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IMAGES_RE = re.compile(r"^(?P<stem>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")


def class_index(folder: str) -> int | None:
    """0-9 for a class folder named by index or by (a slug of) its Fashion-MNIST name."""
    slug = folder.strip().lower().replace("_", "-").replace(" ", "-").replace("/", "-")
    if slug.isdigit() and int(slug) < len(CLASS_NAMES):
        return int(slug)
    aliases = {name: i for i, name in enumerate(CLASS_NAMES)}
    aliases.update({"t-shirt-top": 0, "tshirt": 0, "ankle-boots": 9, "ankleboot": 9})
    return aliases.get(slug)


@dataclass(frozen=True)
class IdxPair:
    """Images and labels of one split (the base files, or an IDX increment)."""

    split: str
    images: str  # relative paths
    labels: str

    @property
    def files(self) -> tuple[str, ...]:
        return (self.images, self.labels)


@dataclass(frozen=True)
class ImageFolder:
    """A batch of class folders of images: ``increments/<batch>/<class>/<file>``."""

    split: str
    batch: str
    images: tuple[tuple[str, int], ...]  # (relative path, label)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.images)


Unit = IdxPair | ImageFolder


@dataclass(frozen=True)
class Layout:
    units: tuple[Unit, ...]
    problems: tuple[str, ...]


def discover(root: Path) -> Layout:
    """Every ingestion unit under ``root``, and every layout problem found on the way."""
    problems: list[str] = []
    units: list[Unit] = []
    inside = _Inside(root)
    for split, (images, labels) in BASE_FILES.items():
        missing = [name for name in (images, labels) if not (root / name).is_file()]
        problems.extend(f"{name}: missing (required in the dataset root)" for name in missing)
        outside = [name for name in (images, labels) if name not in missing
                   and inside.leaves(os.path.join(root, name))]
        problems.extend(f"{name}: {LEAVES_ROOT}" for name in outside)
        if not missing and not outside:
            units.append(IdxPair(split, images, labels))
    increments = root / "increments"
    if increments.is_dir() and inside.leaves(str(increments)):
        problems.append(f"increments: {LEAVES_ROOT}")
    elif increments.is_dir():
        for entry in _entries(increments):
            batch = Path(entry.path)
            if entry.is_symlink() and not inside(entry.path):
                problems.append(f"{_rel(root, batch)}: {LEAVES_ROOT}")
            elif entry.is_dir():
                units.extend(_discover_batch(root, batch, problems, inside))
            else:
                problems.append(f"{_rel(root, batch)}: increments must be folders, found a file")
    return Layout(tuple(units), tuple(problems))


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` (inside the dataset folder, links followed) by name, hidden
    ones left out: an entry that is not a link is inside too, so only links are resolved."""
    with os.scandir(folder) as scan:
        return sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)


class _Inside:
    """Whether a path, links followed, stays inside the dataset folder: a link to a file
    elsewhere (another user's data, /etc/...) is refused, not silently ingested."""

    def __init__(self, root: Path) -> None:
        self._root = os.path.realpath(root) + os.sep

    def __call__(self, path: str) -> bool:
        return os.path.realpath(path).startswith(self._root)

    def leaves(self, path: str) -> bool:
        """Whether ``path``, an entry of a folder inside, leads out: only a link can."""
        return os.path.islink(path) and not self(path)


LEAVES_ROOT = "a link leading out of the dataset folder (refused)"


def _discover_batch(root: Path, batch: Path, problems: list[str], inside: _Inside) -> list[Unit]:
    units: list[Unit] = []
    entries: list[os.DirEntry[str]] = []
    for entry in _entries(batch):
        if entry.is_symlink() and not inside(entry.path):
            problems.append(f"{_rel(root, Path(entry.path))}: {LEAVES_ROOT}")
        else:
            entries.append(entry)
    idx_files = {e.name for e in entries if e.is_file()}
    for name in sorted(idx_files):
        match = _IMAGES_RE.match(name)
        if match:
            labels = f"{match['stem']}-labels-idx1-ubyte{match['gz'] or ''}"
            if labels in idx_files:
                units.append(IdxPair("train", _rel(root, batch / name), _rel(root, batch / labels)))
            else:
                problems.append(f"{_rel(root, batch / name)}: no matching labels file {labels}")
        elif not re.match(r"^.+-labels-idx1-ubyte(\.gz)?$", name):
            problems.append(f"{_rel(root, batch / name)}: not an IDX file or a class folder")
        elif name.replace("-labels-idx1-", "-images-idx3-") not in idx_files:
            problems.append(f"{_rel(root, batch / name)}: no matching images file")
    images: list[tuple[str, int]] = []
    for folder in (Path(e.path) for e in entries if e.is_dir()):
        label = class_index(folder.name)
        if label is None:
            problems.append(
                f"{_rel(root, folder)}: unknown class folder {folder.name!r} "
                f"(expected one of {', '.join(CLASS_NAMES)} or 0-9)"
            )
            continue
        for relative, link in _files_under(str(folder), _rel(root, folder)):
            # the walk never enters a linked folder: only a linked file can lead elsewhere
            if link and not inside(os.path.join(root, relative)):
                problems.append(f"{relative}: {LEAVES_ROOT}")
                continue
            if not relative.lower().endswith(IMAGE_SUFFIXES):  # the name is not hidden
                problems.append(f"{relative}: not a PNG or JPEG file")
                continue
            images.append((relative, label))
    if images:
        units.append(ImageFolder("train", _rel(root, batch), tuple(images)))
    if not units and not any(_rel(root, batch) in p for p in problems):
        problems.append(f"{_rel(root, batch)}: empty increment (no IDX pair and no images)")
    return units


def _files_under(folder: str, relative: str) -> list[tuple[str, bool]]:
    """(relative path, is a link) of the non-hidden files below ``folder``, sorted by path
    (hidden folders are skipped, as fingerprinting skips them; linked folders are not
    entered). Listed in C where built (dataset.native); else plain strings and scandir's own
    file types: a push can hold many files, and a system call per file is the increment's
    main cost."""
    if native.available():
        return native.list_files(folder, relative)
    found: list[tuple[str, bool]] = []
    _list_under(folder, relative, found)
    return sorted(found)


def _list_under(folder: str, relative: str, found: list[tuple[str, bool]]) -> None:
    """``_files_under`` in Python, unsorted."""
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError:  # removed or unreadable while we walked, as os.walk skips it
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():  # a link to a folder counts as one, and is not entered
            if not entry.is_symlink():
                _list_under(entry.path, f"{relative}/{entry.name}", found)
        else:
            found.append((f"{relative}/{entry.name}", entry.is_symlink()))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def resolve_root(data_uri: str) -> Path:
    """A local dataset root from a URI (a path or ``file://``)."""
    if data_uri.startswith("file://"):
        data_uri = data_uri.removeprefix("file://")
    elif "://" in data_uri:
        scheme = data_uri.split("://", 1)[0]
        raise UnsupportedSourceError(data_uri, scheme)
    root = Path(data_uri).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(data_uri)
    return root.resolve()
