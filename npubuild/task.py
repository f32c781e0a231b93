"""What differs between the two kinds of model: data, targets, loss, and how to score them.

keyword_spotting: one softmax over classes, labels are class indices.
image_quality: one sigmoid output per head, labels are 0/1 per head; Keras gets
them positionally (a list in head order), since tfmot's wrappers rename outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe


def load_split(recipe: Recipe, features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (float32) and labels of one split."""
    if recipe.task == "image_quality":
        from npubuild.kinds.quality.data import load_images, to_model_input

        images, labels = load_images(features, split)
        return to_model_input(images), labels.astype(np.float32)
    from npubuild.kinds.kws.data import load_split as load_mfcc

    return load_mfcc(features, split)


def representative(recipe: Recipe, features: Path, count: int, seed: int) -> np.ndarray:
    """Representative inputs for quantization, from the training split."""
    x, _ = load_split(recipe, features, "train")
    pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:count])
    rows = x[pick]
    if recipe.task == "image_quality":
        from npubuild.kinds.quality.data import full_range_image, to_model_input

        ramp = to_model_input(full_range_image(recipe.image.height, recipe.image.width))
        rows = np.concatenate([ramp[None], rows])
    return rows


def fit_targets(recipe: Recipe, y: np.ndarray):
    """Labels as Keras wants them for this model's outputs."""
    if recipe.task == "image_quality":
        return [y[:, i:i + 1] for i in range(y.shape[1])]
    return y


def compile_args(recipe: Recipe, keras) -> dict:
    if recipe.task == "image_quality":
        n = len(recipe.heads)
        return {"loss": [keras.losses.BinaryCrossentropy()] * n,
                "metrics": [[keras.metrics.BinaryAccuracy(name="acc")] for _ in range(n)]}
    return {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
