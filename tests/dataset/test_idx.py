import gzip
import struct

import numpy as np
import pytest

from dataset import idx


def _gz(path, payload):
    path.write_bytes(gzip.compress(payload))
    return path


def test_round_trip(tmp_path):
    images = np.arange(3 * 784, dtype=np.uint8).reshape(3, 28, 28)
    idx.write_images(tmp_path / "i.gz", images)
    idx.write_labels(tmp_path / "l.gz", np.array([0, 9, 4], np.uint8))
    assert np.array_equal(np.concatenate(list(idx.iter_images(tmp_path / "i.gz"))), images)
    assert idx.read_labels(tmp_path / "l.gz").tolist() == [0, 9, 4]


def test_wrong_magic_names_file_and_numbers(tmp_path):
    path = _gz(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">II", 2049, 1) + b"\0")
    with pytest.raises(idx.IdxError, match="train-images-idx3-ubyte.gz: expected magic 2051, found 2049"):
        list(idx.iter_images(path))


def test_truncated_gzip(tmp_path):
    full = gzip.compress(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(7840))
    path = tmp_path / "x.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(idx.IdxError, match="x.gz: .*(truncated|ends early|gzip)"):
        list(idx.iter_images(path))


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(idx.IdxError, match="x.gz"):
        list(idx.iter_images(path))


def test_declared_count_larger_than_data(tmp_path):
    path = _gz(tmp_path / "x.gz", struct.pack(">IIII", 2051, 5, 28, 28) + bytes(784 * 2))
    with pytest.raises(idx.IdxError, match="ends early"):
        list(idx.iter_images(path))


def test_more_data_than_declared(tmp_path):
    path = _gz(tmp_path / "x.gz", struct.pack(">IIII", 2051, 1, 28, 28) + bytes(784 * 2))
    with pytest.raises(idx.IdxError, match="more data than its header"):
        list(idx.iter_images(path))


def test_wrong_dimensions(tmp_path):
    path = _gz(tmp_path / "x.gz", struct.pack(">IIII", 2051, 1, 32, 32) + bytes(1024))
    with pytest.raises(idx.IdxError, match="32x32, expected 28x28"):
        list(idx.iter_images(path))


def test_absurd_header_is_refused_before_allocating(tmp_path):
    path = _gz(tmp_path / "x.gz", struct.pack(">IIII", 2051, 4_000_000_000, 28, 28))
    with pytest.raises(idx.IdxError, match="more than the limit"):
        list(idx.iter_images(path))


def test_labels_outside_range(tmp_path):
    path = _gz(tmp_path / "l.gz", struct.pack(">II", 2049, 3) + bytes([1, 12, 3]))
    with pytest.raises(idx.IdxError, match="label 12 at record 1 is outside 0-9"):
        idx.read_labels(path)
