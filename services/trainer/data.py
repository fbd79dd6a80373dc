"""The training's tf.data input pipeline over ingested TFRecord shards (TensorFlow configured by
the caller: ``services.trainer.process.fit``).

The split is read into memory as arrays first (``dataset.example.read_shards``: every record
of a 28x28 image has one layout, so a shard is one reshape), kept as bytes (a quarter of the
floats the pipeline used to cache), and scaled a batch at a time. Parsing the records one by
one in tf.data took 1.5-2.5 s before the first batch (the shuffle buffer fills first) and
went on taking CPU from the training steps for the whole first epoch; reading them as arrays
takes about 0.1 s. The dataset's size is bounded by what the cache held before: all of it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dataset.example import read_shards
from dataset.store import shard_paths
from services.trainer.spec import VALIDATION_EVERY

SHUFFLE_BUFFER = 10_000


def _scaled(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32) / 255.0, labels


def train_and_validation(
    dataset_uri: str, global_batch: int, seed: int = 7, deterministic: bool = False
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Scaled to [0,1], shuffled (by ``seed``), batched by the global batch size, prefetched;
    one record in ``VALIDATION_EVERY`` (by position) held out for validation. ``deterministic``:
    every parallel stage keeps its input's order, whatever finishes first."""
    images, labels = read_shards(shard_paths(dataset_uri, "train"))
    held_out = np.arange(len(labels)) % VALIDATION_EVERY == 0
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    if deterministic:
        options.deterministic = True

    def split(mask: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images[mask][..., None], labels[mask]))

    train = (
        split(~held_out)
        .shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(global_batch, drop_remainder=True)
        .map(_scaled, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    val = (
        split(held_out)
        .batch(global_batch)
        .map(_scaled, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return train, val
