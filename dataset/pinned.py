"""The pinned evaluation set: one ingested dataset of the store whose test split every
candidate and the champion are also scored on, so that a push that rewrites the test split
cannot make a worse model look better.

``<store>/pinned.json`` names it (key, content digest, where it is, when and how it was
chosen). The first dataset a run trains on is pinned (``pin_first``: only if nothing is pinned
yet, race-free); ``retrain golden set`` pins another one (``pin``). Written whole under a
hidden name and published by link or rename, so a reader never sees half a record. ``retrain
cache gc`` never collects the pinned dataset.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from dataset.errors import DatasetError
from dataset.store import TMP_PREFIX, load_metadata

FILE = "pinned.json"
FIRST = "the first dataset a run trained on"
CHOSEN = "retrain golden set"


class PinnedSetError(DatasetError):
    """The pinned evaluation set cannot be read, or a dataset cannot be pinned."""


@dataclass(frozen=True)
class Pinned:
    key: str  # the ingested dataset's key (folder name under <store>/datasets/)
    digest: str  # that dataset's content digest
    dataset_uri: str  # <store>/datasets/<key>
    set_at: float
    how: str  # FIRST or "retrain golden set" (who/what chose it)


def store_of(dataset_uri: str) -> Path:
    """The store an ingested dataset belongs to (``<store>/datasets/<key>``)."""
    return Path(dataset_uri).parent.parent


def current(store: Path) -> Pinned | None:
    """The pinned evaluation set of ``store``, or None when nothing is pinned there."""
    path = store / FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PinnedSetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return Pinned(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise PinnedSetError(f"{path}: not a pinned evaluation set ({exc}); choose one again "
                             "with retrain golden set --data DIR") from None


def _record(store: Path, dataset_uri: str, how: str) -> Pinned:
    """What pinning ``dataset_uri`` records, after checking it is a dataset of ``store``
    with a test split."""
    folder = Path(dataset_uri)
    if store_of(dataset_uri).resolve() != store.resolve() or folder.parent.name != "datasets":
        raise PinnedSetError(f"{dataset_uri} is not an ingested dataset of the store {store}")
    try:
        meta = load_metadata(folder)
        digest = str(meta["digest"])
        tests = int(meta["splits"]["test"]["count"])  # type: ignore[index]
    except FileNotFoundError:
        raise PinnedSetError(f"{dataset_uri}: no such ingested dataset") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PinnedSetError(f"{dataset_uri}: unreadable metadata, no test split to pin "
                             f"({type(exc).__name__}: {exc})") from None
    if tests < 1:
        raise PinnedSetError(f"{dataset_uri}: its test split is empty; nothing to evaluate on")
    return Pinned(key=folder.name, digest=digest, dataset_uri=str(store / "datasets" / folder.name),
                  set_at=time.time(), how=how)


def _written(store: Path, pinned: Pinned) -> Path:
    """``pinned`` written whole to a hidden file of ``store``, for the caller to publish."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f"{TMP_PREFIX}{FILE}-{uuid.uuid4().hex[:8]}"
    with tmp.open("w") as out:
        out.write(json.dumps(asdict(pinned), indent=1))
        out.flush()
        os.fsync(out.fileno())
    return tmp


def pin(store: Path, dataset_uri: str, how: str) -> Pinned:
    """Pin the test split of ``dataset_uri`` (a dataset of ``store``), replacing whatever was
    pinned, atomically."""
    pinned = _record(store, dataset_uri, how)
    tmp = _written(store, pinned)
    try:
        os.replace(tmp, store / FILE)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return pinned


def pin_first(store: Path, dataset_uri: str) -> Pinned:
    """Pin ``dataset_uri`` only if nothing is pinned in ``store`` yet; returns what is in
    force. Race-free: the record is published by a hard link, which fails when another
    process published one first, whose record then stands."""
    existing = current(store)
    if existing is not None:
        return existing
    pinned = _record(store, dataset_uri, FIRST)
    tmp = _written(store, pinned)
    try:
        os.link(tmp, store / FILE)
    except FileExistsError:
        return current(store) or pinned
    finally:
        tmp.unlink(missing_ok=True)
    return pinned
