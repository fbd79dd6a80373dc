"""The tf.data input pipeline over ingested TFRecord shards."""

from __future__ import annotations

from core.tf_start import configure

configure()

import tensorflow as tf  # noqa: E402

from dataset.store import shard_paths  # noqa: E402
from services.trainer.spec import VALIDATION_EVERY  # noqa: E402

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def _parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    parsed = tf.io.parse_single_example(record, FEATURES)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (28, 28, 1))
    return tf.cast(image, tf.float32) / 255.0, parsed["label"]


def records(dataset_uri: str, split: str) -> tf.data.Dataset:
    files = shard_paths(dataset_uri, split)
    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)


def train_and_validation(
    dataset_uri: str, global_batch: int, seed: int = 7
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Scaled to [0,1], cached, shuffled, batched by the global batch size, prefetched."""
    indexed = records(dataset_uri, "train").enumerate()
    train = indexed.filter(lambda i, _: i % VALIDATION_EVERY != 0).map(lambda _, r: r)
    val = indexed.filter(lambda i, _: i % VALIDATION_EVERY == 0).map(lambda _, r: r)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = (
        train.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(global_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    val = (
        val.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .batch(global_batch)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return train, val


def test_arrays(dataset_uri: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole test split as (images float32 [n,28,28,1], labels int64 [n])."""
    ds = records(dataset_uri, "test").map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for x, y in ds.batch(4096):
        images.append(x)
        labels.append(y)
    return tf.concat(images, 0), tf.concat(labels, 0)
