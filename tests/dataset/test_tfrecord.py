"""TFRecord framing without TensorFlow: the bytes TensorFlow's own writer writes, read back by
TensorFlow's own reader; and ingestion in a process where TensorFlow cannot be imported."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dataset.example import records
from dataset.tfrecord import TFRecordFile, frame, masked_crc
from tests.conftest import write_dataset


def _tensorflow_bytes(path, rows) -> bytes:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            writer.write(row)
    return path.read_bytes()


def test_masked_crc_of_known_values():
    # CRC-32C check value (RFC 3720 B.4: 32 zero bytes -> 0x8A9136AA), then masked
    crc = 0x8A9136AA
    assert masked_crc(bytes(32)) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("kind", ["array", "list of lengths"])
def test_framing_is_tensorflows_byte_for_byte_and_reads_back(kind, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (37, 28, 28), np.uint8)
    labels = rng.integers(0, 10, 37).astype(np.uint8)
    if kind == "array":
        rows = records(images, labels)
        assert isinstance(rows, np.ndarray)
        as_bytes = [row.tobytes() for row in rows]
    else:  # varied lengths, an empty record, a label past one varint byte
        rows = as_bytes = [b"", b"x", bytes(range(256)) * 3,
                           *records(images[:2], np.array([200, 3], np.int64))]
    expected = _tensorflow_bytes(tmp_path / "tf.tfrecord", as_bytes)
    assert frame(rows) == expected
    ours = tmp_path / "ours.tfrecord"
    writer = TFRecordFile(ours)
    writer.write(rows[:5])
    writer.write(rows[5:])
    writer.close()
    assert ours.read_bytes() == expected
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(ours))]
    assert read == as_bytes


def test_ingest_runs_where_tensorflow_cannot_be_imported(tmp_path):
    """`retrain ingest` (and so every run's ingest step) imports no TensorFlow: here an
    import of it fails, as in a slim image; the dataset is ingested all the same."""
    blocked = tmp_path / "no-tensorflow" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
    root = write_dataset(tmp_path / "data", train=120, test=40)
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("RETRAIN_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "retrain.cli", "ingest", "--data", str(root)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    shards = list((tmp_path / "home").rglob("shard-*.tfrecord"))
    assert shards, done.stdout
    import tensorflow as tf

    count = sum(1 for _ in tf.data.TFRecordDataset([str(s) for s in shards]))
    assert count == 160
