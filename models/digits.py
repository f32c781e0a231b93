"""The worked example of your own model (`models/digits.toml`): a small CNN on the 8x8 handwritten digits
scikit-learn bundles in its wheel (`sklearn.datasets.load_digits`: 1,797 images, nothing downloaded)."""

import numpy as np


def build_model():
    """An uncompiled tf_keras classifier: one softmax output over the ten digits."""
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 1), name="digit")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax", name="digit_scores")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def load_data():
    """The six arrays: pixels scaled to [0, 1] (8x8x1), labels 0-9, split 70/15/15 with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    n_train, n_val = int(0.7 * len(y)), int(0.15 * len(y))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {f"{p}_{split}": (x if p == "x" else y)[idx] for split, idx in parts.items() for p in ("x", "y")}
