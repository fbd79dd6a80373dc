"""The training's tf.data input pipeline over ingested TFRecord shards (TensorFlow configured by
the caller: ``services.trainer.process.fit``)."""

from __future__ import annotations

import tensorflow as tf

from dataset.records import parse, records
from services.trainer.spec import VALIDATION_EVERY


def train_and_validation(
    dataset_uri: str, global_batch: int, seed: int = 7, deterministic: bool = False
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Scaled to [0,1], cached, shuffled (by ``seed``), batched by the global batch size,
    prefetched; ``deterministic``: every parallel stage keeps its input's order, whatever
    finishes first."""
    indexed = records(dataset_uri, "train").enumerate()
    train = indexed.filter(lambda i, _: i % VALIDATION_EVERY != 0).map(lambda _, r: r)
    val = indexed.filter(lambda i, _: i % VALIDATION_EVERY == 0).map(lambda _, r: r)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    if deterministic:
        options.deterministic = True
    train = (
        train.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(global_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    val = (
        val.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .batch(global_batch)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return train, val
