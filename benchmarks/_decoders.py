"""Section 2's helpers for bench_cache.py: a JPEG increment as a camera would push it, and
each PNG/JPEG decoder timed alone on an increment's files (the one before libspng read
from Git)."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

import numpy as np
from _common import ROOT, timed

from dataset import idx, jpeg, native, png
from dataset.layout import CLASS_NAMES
from dataset.seed import generate


def write_jpeg_increment(root: Path, batch: str, n: int, seed: int) -> Path:
    """Push ``n`` labelled images as class folders of (grayscale) JPEGs, as a camera would."""
    from PIL import Image

    images, labels = generate(n, seed)
    staging = root / "increments" / f".{batch}"
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = staging / CLASS_NAMES[label] / f"{batch}-{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(target, "JPEG", quality=90)
    final = root / "increments" / batch
    staging.rename(final)
    return final


def previous_png_decoder():
    """The PNG decoding ingestion used before libspng (zlib + numpy row filters, batched),
    read from the commit before the change, or None outside a Git checkout."""
    found = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS}:dataset/png.py"],
                           capture_output=True, text=True, check=False)
    if found.returncode:
        return None
    module = types.ModuleType("previous_png")
    exec(compile(found.stdout, "previous_png.py", "exec"), module.__dict__)  # noqa: S102

    def decode(datas: list[bytes]):
        rows = [module.inflate_gray8(d)[2] for d in datas]
        lines = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), idx.ROWS, idx.COLS + 1)
        return module.unfilter(lines)

    return decode


PREVIOUS = "a82839c"  # the last commit with the numpy PNG decoder


def decoders(pushed: Path) -> dict[str, float]:
    """Microseconds per image of each decoder on the pushed files (bytes in memory)."""
    from dataset.ingest import _pillow_decode

    datas = [p.read_bytes() for p in sorted(pushed.rglob("*.*"))]
    ways = {"Pillow (the reference)": lambda: [_pillow_decode("x", d) for d in datas]}
    if datas[0].startswith(png.SIGNATURE):
        previous = previous_png_decoder()
        if previous is not None:
            ways["zlib + numpy (before)"] = lambda: previous(datas)
        ways["libspng (Python path)"] = lambda: [png.decode_gray28(d) for d in datas]
        if native.available():
            ways["C threads (now), batch"] = lambda: native.decode_png28(datas)
    else:
        ways["libjpeg-turbo (now)"] = lambda: [jpeg.decode_gray28(d) for d in datas]
    return {name: min(timed(way)[0] for _ in range(5)) / len(datas) * 1e6
            for name, way in ways.items()}
