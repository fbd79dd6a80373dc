"""The three model variants that compete for serving (Keras 2 via tf_keras)."""

from __future__ import annotations

import tf_keras as keras

from core.settings import MODEL_TYPES

INPUT_NAME = "image"


def build(model_type: str, learning_rate: float = 1e-3) -> keras.Model:
    """``cnn``: three conv layers, max pooling, dense 64, softmax (93,322 parameters);
    ``dropout`` adds dropout; ``batch_norm`` adds batch normalisation."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {MODEL_TYPES}")
    layers = keras.layers
    inputs = keras.Input(shape=(28, 28, 1), name=INPUT_NAME)
    x = inputs
    for filters, pool in ((32, True), (64, True), (64, False)):
        x = layers.Conv2D(filters, 3, use_bias=model_type != "batch_norm")(x)
        if model_type == "batch_norm":
            x = layers.BatchNormalization(momentum=0.9)(x)  # short budgets: track stats faster
        x = layers.Activation("relu")(x)
        if pool:
            x = layers.MaxPooling2D(2)(x)
            if model_type == "dropout":
                x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    if model_type == "dropout":
        x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=model_type)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
