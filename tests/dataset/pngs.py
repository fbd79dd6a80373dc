"""PNG pieces the decoder tests build by hand: an independent encoder's chunks and rows."""

import struct
import zlib

import numpy as np


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filtered_rows(pixels: np.ndarray, filters: list[int]) -> bytes:
    """The rows of ``pixels`` as PNG stores them: each row's filter type, then its samples
    filtered with it (types 0-4: none, sub, up, average, Paeth)."""
    out, prior = [], [0] * pixels.shape[1]
    for y, kind in enumerate(filters):
        line, row = [int(v) for v in pixels[y]], [kind]
        for x, value in enumerate(line):
            a, b, c = (line[x - 1] if x else 0), prior[x], (prior[x - 1] if x else 0)
            row.append((value - [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]) % 256)
        out.append(bytes(row))
        prior = line
    return b"".join(out)


def decode_from_disk(root, items: list[tuple[str, int]], problems: list[str]):
    """``dataset.ingest._decode_batch`` on files under ``root`` the fingerprint did not keep,
    at their sizes on disk."""
    from dataset.ingest import _decode_batch

    sizes = {name: (root / name).stat().st_size for name, _ in items}
    return _decode_batch(root, items, problems, {}, sizes)
