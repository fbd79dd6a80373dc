"""Reading the store's TFRecord shards with tf.data: each record an image and its label.

The trainer's input pipeline and the selector's scoring read the shards through here. The
caller configures TensorFlow first (``core.tf_start.configure``, at its entry point).
"""

from __future__ import annotations

import tensorflow as tf

from dataset.example import read_shards
from dataset.store import shard_paths

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One record as (image float32 [28,28,1] scaled to [0,1], label int64)."""
    parsed = tf.io.parse_single_example(record, FEATURES)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (28, 28, 1))
    return tf.cast(image, tf.float32) / 255.0, parsed["label"]


def records(dataset_uri: str, split: str) -> tf.data.Dataset:
    files = shard_paths(dataset_uri, split)
    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)


def test_arrays(dataset_uri: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole test split as (images float32 [n,28,28,1], labels int64 [n]), its shards read
    as arrays (``dataset.example.read_shards``), not record by record."""
    images, labels = read_shards(shard_paths(dataset_uri, "test"))
    return tf.constant(images[..., None], tf.float32) / 255.0, tf.constant(labels)
