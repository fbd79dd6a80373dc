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


def _shard(path, images, labels):
    path.write_bytes(frame(records(images, labels)))
    return path


def test_shards_read_as_arrays_are_what_tensorflow_parses(tmp_path):
    import tensorflow as tf

    from dataset.example import read_shards

    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):  # TensorFlow's own reading of a tf.train.Example
        parsed = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (28, 28, 1))
        return tf.cast(image, tf.float32) / 255.0, parsed["label"]

    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (50, 28, 28), np.uint8)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    paths = [_shard(tmp_path / "a", images[:30], labels[:30]),
             _shard(tmp_path / "b", images[30:], labels[30:]), tmp_path / "empty"]
    paths[2].write_bytes(b"")
    got_images, got_labels = read_shards(paths)
    parsed = list(tf.data.TFRecordDataset([str(p) for p in paths]).map(parse))
    assert np.array_equal(got_images, np.stack([(x.numpy()[..., 0] * 255).round() for x, _ in parsed]))
    assert got_labels.tolist() == [int(y) for _, y in parsed] == labels.tolist()


@pytest.mark.parametrize("labels", [[300] * 4, [3, 200, 1000, 7]], ids=["uniform", "mixed"])
def test_labels_past_one_varint_byte_read_back_whole(labels, tmp_path):
    from dataset.example import read_shards

    images = np.arange(4 * 784, dtype=np.uint32).astype(np.uint8).reshape(4, 28, 28)
    got_images, got_labels = read_shards([_shard(tmp_path / "s", images, np.array(labels))])
    assert got_labels.tolist() == labels and np.array_equal(got_images, images)


@pytest.mark.parametrize("labels", [[1, 2, 3, 4], [1, 200, 3, 4]], ids=["uniform", "mixed"])
@pytest.mark.parametrize("where", ["image", "length", "crc"])
def test_a_damaged_record_is_refused_naming_its_shard_and_place(labels, where, tmp_path):
    from dataset.errors import DamagedShardError
    from dataset.example import read_shards

    images = np.full((4, 28, 28), 9, np.uint8)
    path = _shard(tmp_path / "s", images, np.array(labels))
    data = bytearray(path.read_bytes())
    second = 16 + int.from_bytes(data[:8], "little")  # where record 1 starts
    offset = {"image": second + 100, "length": second + 3, "crc": second + 9}[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedShardError, match=f"{path.name} is damaged at record 1"):
        read_shards([path])
