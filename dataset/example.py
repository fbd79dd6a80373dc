"""The records of the store's shards: serialized ``tf.train.Example``s {image: bytes, label:
int64}, built and read without TensorFlow. Every record of a 28x28 image holds the image at the
same offset (its label follows it), so batches are assembled, and shards read back, as arrays.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from dataset import idx
from dataset.errors import DamagedShardError
from dataset.tfrecord import masked_crc, masked_crcs


def _example(image: bytes, label: int) -> bytes:
    """A serialized tf.train.Example {image: bytes, label: int64}, built without TF."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            if value:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:  # length-delimited field
        return varint((number << 3) | 2) + varint(len(payload)) + payload

    bytes_list = field(1, field(1, image))          # Feature{bytes_list{value}}
    int64_list = field(3, field(1, varint(label)))  # Feature{int64_list{value (packed)}}
    feature_map = field(1, field(1, b"image") + field(2, bytes_list))
    feature_map += field(1, field(1, b"label") + field(2, int64_list))
    return field(1, feature_map)                    # Example{features{feature map}}


@functools.lru_cache(maxsize=4)
def layout(image_len: int) -> tuple[bytes, bytes, bytes]:
    """The constant bytes around the image and the label in a serialized Example whose image
    has ``image_len`` bytes and whose label is 0-9 (a one-byte varint): every length inside is
    fixed, so a record is ``head + image + middle + label + tail``."""
    zeros = _example(bytes(image_len), 0)
    ones = _example(b"\xff" * image_len, 0)
    labelled = _example(bytes(image_len), 1)
    start = next(i for i, (a, b) in enumerate(zip(zeros, ones)) if a != b)
    where = next(i for i, (a, b) in enumerate(zip(zeros, labelled)) if a != b)
    assert len(zeros) == len(ones) == len(labelled) and where > start + image_len
    return zeros[:start], zeros[start + image_len:where], zeros[where + 1:]


def records(images: np.ndarray, labels: np.ndarray) -> np.ndarray | list[bytes]:
    """Serialized Examples for a batch, one row each, assembled with array copies (a label
    of 128 or more, which no class has, takes two varint bytes: built one by one)."""
    flat = images.reshape(len(images), -1)
    if labels.size and int(labels.max()) >= 0x80:
        return [_example(image.tobytes(), int(label)) for image, label in zip(flat, labels)]
    head, middle, tail = layout(flat.shape[1])
    width = len(head) + flat.shape[1] + len(middle) + 1 + len(tail)
    out = np.empty((len(flat), width), np.uint8)
    at = 0
    for part in (head, flat, middle, labels.reshape(-1, 1), tail):
        block = np.frombuffer(part, np.uint8) if isinstance(part, bytes) else part
        out[:, at:at + block.shape[-1]] = block
        at += block.shape[-1]
    return out


def read_unit(store: Path, unit: str) -> np.ndarray:
    """The images of an ingested unit (uint8, n x 28 x 28), in record order, read from its
    shards without TensorFlow: every record holds its image at the same offset (the label
    follows it), so a shard whose records all have one length is read as one array."""
    return read_labelled_unit(store, unit)[0]


def read_labelled_unit(store: Path, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and the labels of an ingested unit, in record order (``read_unit``)."""
    folder = store / "shards" / unit
    meta = json.loads((folder / "unit.json").read_text())
    images, labels = read_shards([folder / shard["name"] for shard in meta["shards"]])
    return images, labels.astype(np.uint8)  # an IDX label is one byte


def read_shards(paths: list[Path] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8, n x 28 x 28) and labels (int64) of TFRecord shards of our records,
    in file then record order, read as arrays: a shard whose records all have the layout of a
    one-byte label is one reshape. Every record's CRCs are checked, as TensorFlow's reader
    checks them (``DamagedShardError`` names the shard and the record)."""
    head, middle, tail = layout(idx.ROWS * idx.COLS)
    at, size = 12 + len(head), idx.ROWS * idx.COLS  # framing: length (8), its CRC (4)
    label_at = at + size + len(middle)
    record = len(head) + size + len(middle) + 1 + len(tail)  # a label of 0-127
    images = [np.empty((0, size), np.uint8)]
    labels = [np.empty(0, np.int64)]
    for path in paths:
        data = np.fromfile(path, np.uint8)
        if not data.size:
            continue
        rows = data.reshape(-1, 16 + record) if data.size % (16 + record) == 0 else None
        if rows is not None and _uniform(rows, record, head, middle):
            _check_crcs(path, rows, record)
            images.append(rows[:, at:at + size])
            labels.append(rows[:, label_at].astype(np.int64))
            continue
        offsets = _offsets(path, data)  # records of other lengths: a label of 128 or more
        images.append(np.stack([data[o + at:o + at + size] for o in offsets])
                      if offsets else np.empty((0, size), np.uint8))
        labels.append(np.array([_varint(data, o + label_at) for o in offsets], np.int64))
    return np.concatenate(images).reshape(-1, idx.ROWS, idx.COLS), np.concatenate(labels)


def _uniform(rows: np.ndarray, record: int, head: bytes, middle: bytes) -> bool:
    """Whether every row is a framed record of ``record`` bytes with our Example's layout."""
    lengths = rows[:, :8].copy().view("<u8").ravel()
    image_end = 12 + len(head) + idx.ROWS * idx.COLS
    return bool((lengths == record).all()
                and (rows[:, 12:12 + len(head)] == np.frombuffer(head, np.uint8)).all()
                and (rows[:, image_end:image_end + len(middle)]
                     == np.frombuffer(middle, np.uint8)).all())


def _check_crcs(path: Path | str, rows: np.ndarray, record: int) -> None:
    length_crc = masked_crc(rows[0, :8].tobytes())
    stored = rows[:, 8:12].copy().view("<u4").ravel()
    data_crcs = rows[:, 12 + record:].copy().view("<u4").ravel()
    computed = masked_crcs(rows[:, 12:12 + record])
    bad = np.flatnonzero((stored != length_crc) | (data_crcs != computed))
    if bad.size:
        raise DamagedShardError(str(path), int(bad[0]))


def _offsets(path: Path | str, data: np.ndarray) -> list[int]:
    """Where each record of a shard starts, every length and record checked by its CRC."""
    offsets, offset = [], 0
    while offset < data.size:
        frame = data[offset:offset + 12].tobytes()
        length = int.from_bytes(frame[:8], "little") if len(frame) == 12 else -1
        end = offset + 12 + length + 4
        if length < 0 or int.from_bytes(frame[8:], "little") != masked_crc(frame[:8]) \
                or end > data.size or int(data[end - 4:end].view("<u4")[0]) != masked_crc(
                    data[offset + 12:end - 4].tobytes()):
            raise DamagedShardError(str(path), len(offsets))
        offsets.append(offset)
        offset = end
    return offsets


def _varint(data: np.ndarray, at: int) -> int:
    value, shift = 0, 0
    while True:
        byte = int(data[at])
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        at, shift = at + 1, shift + 7
