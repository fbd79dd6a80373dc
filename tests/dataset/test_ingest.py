import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dataset import idx
from dataset.errors import DatasetValidationError
from dataset.fingerprint import fingerprint
from dataset.ingest import ingest
from dataset.seed import write_png_increment
from dataset.store import shard_paths, verify


def _ingest(root, store, key="k"):
    return ingest(root, store, fingerprint(root), dataset_key=key, shard_size=250)


def test_ingests_records_that_tensorflow_reads_back(dataset, tmp_path):
    import tensorflow as tf

    result = _ingest(dataset, tmp_path / "store")
    assert result.records == {"train": 600, "test": 200}
    assert sum(result.per_class["train"]) == 600
    labels = idx.read_labels(dataset / "train-labels-idx1-ubyte.gz")
    images = np.concatenate(list(idx.iter_images(dataset / "train-images-idx3-ubyte.gz")))
    feats = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    records = list(tf.data.TFRecordDataset(shard_paths(result.dataset_uri, "train")))
    assert len(records) == 600
    first = tf.io.parse_single_example(records[0], feats)
    assert int(first["label"]) == labels[0]
    assert first["image"].numpy() == images[0].tobytes()
    assert len(shard_paths(result.dataset_uri, "train")) == 3  # 600 records, shards of 250


def test_an_increment_is_ingested_alone_and_the_rest_reused(dataset, tmp_path):
    store = tmp_path / "store"
    _ingest(dataset, store, "v1")
    write_png_increment(dataset, "b1", 40, seed=9)
    second = _ingest(dataset, store, "v2")
    assert (second.reused_units, second.new_units) == (2, 1)
    assert second.records["train"] == 640


def test_validation_collects_every_problem_and_publishes_nothing(dataset, tmp_path):
    store = tmp_path / "store"
    (dataset / "t10k-labels-idx1-ubyte.gz").unlink()
    bad = dataset / "increments" / "b1"
    (bad / "socks").mkdir(parents=True)
    Image.new("L", (28, 28)).save(bad / "socks" / "a.png")
    (bad / "coat").mkdir()
    (bad / "coat" / "notes.txt").write_text("hello")
    Image.new("L", (30, 30)).save(bad / "coat" / "big.png")
    (bad / "coat" / "broken.png").write_bytes(b"\x89PNG not really")
    (dataset / "increments" / "empty").mkdir()
    with pytest.raises(DatasetValidationError) as info:
        _ingest(dataset, store)
    text = "\n".join(info.value.problems)
    for expected in ("t10k-labels-idx1-ubyte.gz: missing", "unknown class folder 'socks'",
                     "notes.txt: not a PNG or JPEG", "big.png: image is 30x30",
                     "broken.png: not a decodable", "increments/empty: empty increment"):
        assert expected in text
    assert not (store / "datasets").exists() or not any((store / "datasets").iterdir())
    for folder in (store, store / "shards"):  # what was written is gone: nothing half-done
        assert not any(p.name.startswith(".tmp") for p in folder.iterdir())
    assert not any((store / "shards").iterdir())


def test_image_label_count_mismatch(dataset, tmp_path):
    idx.write_labels(dataset / "train-labels-idx1-ubyte.gz", np.zeros(599, np.uint8))
    with pytest.raises(DatasetValidationError, match="holds 600 images but .* holds 599 labels"):
        _ingest(dataset, tmp_path / "store")


def test_verify_notices_missing_and_altered_shards(dataset, tmp_path):
    result = _ingest(dataset, tmp_path / "store")
    assert verify(result.dataset_uri) is None
    shard = shard_paths(result.dataset_uri, "train")[0]
    with open(shard, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    assert "checksum differs" in verify(result.dataset_uri)
    shutil.rmtree(tmp_path / "store" / "shards")
    assert "missing" in verify(result.dataset_uri)


def test_verify_is_not_fooled_by_a_restored_mtime(dataset, tmp_path):
    import os
    import time

    result = _ingest(dataset, tmp_path / "store")
    shard = shard_paths(result.dataset_uri, "test")[0]
    before = os.stat(shard)
    time.sleep(0.05)  # past the file system's timestamp granularity
    with open(shard, "r+b") as handle:
        handle.seek(50)
        handle.write(b"\x00\x01")
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the write's mtime
    time.sleep(0.2)  # old enough that verify would trust an unchanged stat signature
    assert "checksum differs" in verify(result.dataset_uri)  # the ctime still moved
    assert "checksum differs" in verify(result.dataset_uri, deep=True)


def test_metadata_records_digest_and_manifest(dataset, tmp_path):
    fp = fingerprint(dataset)
    result = ingest(dataset, tmp_path / "store", fp, dataset_key="k")
    meta = json.loads((tmp_path / "store" / "datasets" / "k" / "metadata.json").read_text())
    assert meta["digest"] == fp.digest == result.digest
    assert len(meta["manifest"]) == 4
    assert meta["manifest"] == [list(f) for f in fp.files]


def test_an_image_whose_name_is_not_utf8_is_ingested_and_listed_in_the_manifest(dataset,
                                                                                  tmp_path):
    import os

    folder = dataset / "increments" / "b1" / "coat"
    folder.mkdir(parents=True)
    Image.new("L", (28, 28), 7).save(folder / "plain.png")
    os.rename(folder / "plain.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    fp = fingerprint(dataset)
    result = ingest(dataset, tmp_path / "store", fp, dataset_key="k")
    assert result.records["train"] == 601
    meta = json.loads((tmp_path / "store" / "datasets" / "k" / "metadata.json").read_text())
    image = next(f for f in fp.files if f.path == "increments/b1/coat/caf\udce9.png")
    assert [image.path, image.size, image.hash] in meta["manifest"]


def test_leftovers_of_a_crashed_ingestion_are_invisible_and_cleaned(dataset, tmp_path):
    import os
    import time

    from dataset.store import clean_temporaries

    store = tmp_path / "store"
    crashed = store / "shards" / ".tmp-deadbeef"
    crashed.mkdir(parents=True)
    (crashed / "shard-00000.tfrecord").write_bytes(b"half written")
    pinned = store / ".tmp-pinned.json-0badf00d"  # a file: the pinned set's, half written
    pinned.write_text("{")
    old = time.time() - 7200
    for leftover in (crashed, pinned):
        os.utime(leftover, (old, old))
    result = _ingest(dataset, store)
    assert not any(".tmp" in path for path in shard_paths(result.dataset_uri, "train"))
    assert verify(result.dataset_uri) is None
    assert clean_temporaries(store) == 2 and not crashed.exists() and not pinned.exists()


def test_a_bomb_and_links_out_of_the_folder_are_refused_with_the_files_named(dataset, tmp_path):
    from tests.bombs import png_bomb

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("L", (28, 28)).save(outside / "secret.png")
    coat = dataset / "increments" / "b1" / "coat"
    coat.mkdir(parents=True)
    Image.new("L", (28, 28)).save(coat / "fine.png")
    (coat / "bomb.png").write_bytes(png_bomb(20_000, 20_000))
    (coat / "stolen.png").symlink_to(outside / "secret.png")
    (dataset / "increments" / "b2").symlink_to(outside)  # a whole increment elsewhere
    (dataset / "increments" / "b1" / "bag").symlink_to(outside)  # a class folder elsewhere
    with pytest.raises(DatasetValidationError) as info:
        _ingest(dataset, tmp_path / "store")
    text = "\n".join(info.value.problems)
    assert "increments/b1/bag: a link leading out of the dataset folder" in text
    assert "increments/b1/coat/bomb.png: the image declares 20000 x 20000 pixels" in text
    assert "increments/b1/coat/stolen.png: a link leading out of the dataset folder" in text
    assert "increments/b2: a link leading out of the dataset folder" in text
    assert "fine.png" not in text


def test_the_images_ingested_are_the_bytes_fingerprinted(dataset, tmp_path):
    import tensorflow as tf

    coat = dataset / "increments" / "b1" / "coat"
    coat.mkdir(parents=True)
    Image.new("L", (28, 28), 7).save(coat / "a.png")
    fp = fingerprint(dataset)
    Image.new("L", (28, 28), 200).save(coat / "a.png")  # rewritten after the fingerprint
    result = ingest(dataset, tmp_path / "store", fp, dataset_key="k", shard_size=250)
    pixels = [tf.io.parse_single_example(r, {"image": tf.io.FixedLenFeature([], tf.string)})
              for r in tf.data.TFRecordDataset(shard_paths(result.dataset_uri, "train"))]
    assert pixels[-1]["image"].numpy() == bytes([7]) * 784  # what the fingerprint names


def test_links_inside_the_folder_are_followed_and_linked_folders_are_not_entered(dataset, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("L", (28, 28)).save(outside / "secret.png")
    coat = dataset / "increments" / "b1" / "coat"
    (coat / "deeper").mkdir(parents=True)
    Image.new("L", (28, 28)).save(coat / "deeper" / "fine.png")
    (coat / "again.png").symlink_to(coat / "deeper" / "fine.png")
    (coat / "linked").symlink_to(outside)  # a folder: neither entered nor ingested
    result = _ingest(dataset, tmp_path / "store")
    assert result.records["train"] == 600 + 2


def test_a_base_file_or_the_increments_folder_linked_out_is_refused_and_linked_in_is_taken(
        dataset, tmp_path):
    from dataset.layout import discover

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.move(dataset / name, outside / name)
    (dataset / name).symlink_to(outside / name)
    (outside / "increments").mkdir()
    (dataset / "increments").symlink_to(outside / "increments")
    problems = discover(dataset).problems
    assert f"{name}: a link leading out of the dataset folder (refused)" in problems
    assert "increments: a link leading out of the dataset folder (refused)" in problems
    (dataset / name).unlink()
    (dataset / "kept").mkdir()
    shutil.move(outside / name, dataset / "kept" / name)
    (dataset / name).symlink_to(dataset / "kept" / name)  # a link that stays inside
    assert not any(p.startswith(name) for p in discover(dataset).problems)


def test_an_image_changed_since_it_was_fingerprinted_is_refused_not_ingested(dataset, tmp_path):
    folder = dataset / "increments" / "b1" / "coat"
    folder.mkdir(parents=True)
    for name, shade in (("a.png", 1), ("b.png", 2)):
        Image.new("L", (28, 28), shade).save(folder / name)
    fp = fingerprint(dataset, keep_contents=False)  # a watcher's: no bytes kept, read again
    (folder / "b.png").write_bytes((folder / "b.png").read_bytes() + b"\0")  # grown since
    with pytest.raises(DatasetValidationError) as info:
        ingest(dataset, tmp_path / "store", fp, dataset_key="k")
    assert list(info.value.problems) == [
        "increments/b1/coat/b.png: changed since the dataset was fingerprinted"]
    fp = fingerprint(dataset, keep_contents=False)
    assert ingest(dataset, tmp_path / "store", fp, dataset_key="k").records["train"] == 602
