"""The store of ingested datasets, as readers see it: a dataset's metadata and shards, the
check that it is still what was written, and the clean-up of crashed writers' leftovers.

``<store>/datasets/<key>/metadata.json`` names its shards under ``<store>/shards/<unit>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from dataset.fingerprint import hash_file

TMP_PREFIX = ".tmp-"  # unpublished work: hidden, removed by clean_temporaries
RECENT_NS = 100_000_000  # a shard changed this recently is re-hashed whatever its signature


def load_metadata(dataset_uri: str | Path) -> dict[str, object]:
    return json.loads((Path(dataset_uri) / "metadata.json").read_bytes())  # UTF-8, any locale


def shard_paths(dataset_uri: str | Path, split: str) -> list[str]:
    """Absolute paths of a split's shards (the store is the dataset folder's grandparent)."""
    folder = Path(dataset_uri)
    store = folder.parent.parent
    meta = load_metadata(folder)
    return [str(store / s["path"]) for s in meta["splits"][split]["shards"]]  # type: ignore[index]


def stat_signature(path: Path, st: os.stat_result | None = None) -> list[int]:
    """What changes whenever a file's bytes are written: mtime and ctime (which no user call
    can set back) and the inode (from ``st`` when the caller has stat'ed the file already)."""
    st = st if st is not None else path.stat()
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def verify(dataset_uri: str | Path, deep: bool = False) -> str | None:
    """Why an ingested dataset cannot be trusted any more, or None when every shard checks out.

    Every shard must exist with its recorded size. Its BLAKE3 is recomputed unless its stat
    signature is the one recorded when it was written (any write since changes the ctime);
    ``deep`` recomputes every checksum regardless."""
    folder = Path(dataset_uri)
    try:
        meta = load_metadata(folder)
    except (OSError, ValueError) as exc:
        return f"ingested dataset {folder} is gone or unreadable ({type(exc).__name__})"
    store = folder.parent.parent
    for split in meta["splits"].values():  # type: ignore[union-attr]
        for shard in split["shards"]:
            path = store / shard["path"]
            try:
                st = path.stat()
                if st.st_size != shard["size"]:
                    return f"shard {shard['path']} has a different size than recorded"
                signature = stat_signature(path, st)
                # timestamps tick coarsely (a few ms): a signature from the last 100 ms proves
                # nothing, as a second write may have landed in the same tick
                unchanged = (not deep and shard.get("stat") == signature
                             and time.time_ns() - signature[1] > RECENT_NS)
            except FileNotFoundError:
                return f"shard {shard['path']} is missing"
            if not unchanged and hash_file(path) != shard["blake3"]:
                return f"shard {shard['path']} checksum differs from the recorded one"
    return None


def remove(path: Path) -> None:
    """A folder with what it holds, or a file (``.tmp-pinned...`` is one)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_temporaries(store: Path, older_than: float = 3600.0) -> int:
    """Remove leftovers of crashed ingestions (hidden temporary folders)."""
    removed = 0
    now = time.time()
    for folder in (store, store / "datasets", store / "shards"):
        if not folder.is_dir():
            continue
        for tmp in folder.glob(f"{TMP_PREFIX}*"):
            try:
                age = now - tmp.stat().st_mtime
            except FileNotFoundError:  # published (renamed) or removed by a concurrent run
                continue
            if age > older_than:
                remove(tmp)
                removed += 1
    return removed
