"""What identifies an exported model: the digest of its files, and a cheap signature that
says when they may have changed.

No TensorFlow here: the training cache, the selector's memory of scores and the lineage all
compare models by these without loading one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from blake3 import blake3

from dataset.store import stat_signature


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} is gone")
    return sorted(p for p in root.rglob("*") if p.is_file())


def model_signature(folder: str | Path) -> dict[str, list[int]]:
    """Each file's size and what any write to it changes (``dataset.store.stat_signature``:
    mtime, ctime, which no user call can set back, and inode)."""
    root = Path(folder)
    return {str(p.relative_to(root)): [p.stat().st_size, *stat_signature(p)]
            for p in _files(root)}


# timestamps tick coarsely (a few ms): a signature vouches for a folder only once its newest
# change is this old, so a write landing in the same tick as the last one cannot go unseen
_SETTLED = 0.1
_digests: dict[tuple[str, str], str] = {}  # (folder, its settled signature) -> digest


def model_digest(folder: str | Path) -> str:
    """BLAKE3 over every file of an exported model (relative path and bytes, in order):
    any change to the graph, the variables or the weights changes it. Remembered in this
    process while no file's stat signature changes (the selector asks for each candidate's
    several times per decision)."""
    root = Path(folder)
    signature = model_signature(root)
    newest = max((s[2] for s in signature.values()), default=0)  # ctime_ns
    settled = time.time_ns() - newest > _SETTLED * 1e9
    known = (str(root.resolve()), json.dumps(signature, sort_keys=True))
    if settled and known in _digests:
        return _digests[known]
    hasher = blake3()
    for path in _files(root):
        hasher.update(str(path.relative_to(root)).encode() + b"\0")
        hasher.update(path.read_bytes())
    digest = hasher.hexdigest()
    if settled:
        if len(_digests) >= 256:
            _digests.clear()
        _digests[known] = digest
    return digest


def wait_settled(folder: str | Path) -> None:
    """Wait until the newest change to ``folder``'s files is old enough for its signature to
    vouch for it (a write in the same clock tick as the last one would otherwise go unseen)."""
    newest = max(p.stat().st_ctime_ns for p in _files(Path(folder)))
    time.sleep(max(0.0, _SETTLED - (time.time_ns() - newest) / 1e9))
