"""Train the FP32 model on the data stage's features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from npubuild.config import Profile, Recipe
from npubuild.stages import atomic_path, epoch_logger, say, write_json


def train_fp32(recipe: Recipe, profile: Profile, features: Path, out_model: Path, out_log: Path) -> None:
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf

    _, keras = import_tf(seed=recipe.seed)
    x_train, y_train = get_kind(recipe.kind).load_split(recipe, features, "train")
    x_val, y_val = get_kind(recipe.kind).load_split(recipe, features, "val")
    model = build_model(recipe)
    steps = profile.epochs * int(np.ceil(len(x_train) / profile.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(profile.learning_rate, decay_steps=max(steps, 1), alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), **get_kind(recipe.kind).compile_args(recipe, keras))
    say(f"  training {recipe.architecture}: {model.count_params():,} parameters, "
          f"{len(x_train)} samples, {profile.epochs} epochs")
    start = time.perf_counter()
    history = model.fit(x_train, get_kind(recipe.kind).fit_targets(recipe, y_train),
                        validation_data=(x_val, get_kind(recipe.kind).fit_targets(recipe, y_val)), epochs=profile.epochs,
                        batch_size=profile.batch_size, shuffle=True, verbose=0,
                        callbacks=[epoch_logger(keras, profile.epochs, "training")])
    seconds = time.perf_counter() - start
    with atomic_path(out_model) as tmp:
        model.save(tmp, include_optimizer=False)
    hist = {k: [round(float(v), 6) for v in vals] for k, vals in history.history.items()}
    write_json(out_log, {"parameters": int(model.count_params()), "samples": len(x_train),
                         "epochs": profile.epochs, "seconds": round(seconds, 1),
                         "samples_per_second": round(len(x_train) * profile.epochs / seconds, 1),
                         "history": hist})


def load_keras_model(path: Path):
    """Load a model saved by any stage, QAT wrappers and quantizers included."""
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)


def build_model(recipe: Recipe):
    """The recipe's untrained model, from its kind. Layer names come from per-process counters: start them
    afresh so every build names the layers (and so the TFLite tensors) the same way."""
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    keras.backend.clear_session()
    return get_kind(recipe.kind).build_model(recipe)
