"""The store's test split as TensorFlow tensors, for the selector's scoring (and ``retrain
reproduce``'s comparison). The shards are read as arrays (``dataset.example.read_shards``,
every record's CRCs checked), not through tf.data. The caller configures TensorFlow first
(``core.tf_start.configure``, at its entry point).
"""

from __future__ import annotations

import tensorflow as tf

from dataset.example import read_shards
from dataset.store import shard_paths


def test_arrays(dataset_uri: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The whole test split as (images float32 [n,28,28,1], labels int64 [n])."""
    images, labels = read_shards(shard_paths(dataset_uri, "test"))
    return tf.constant(images[..., None], tf.float32) / 255.0, tf.constant(labels)
