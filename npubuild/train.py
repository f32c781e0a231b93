"""Train the FP32 model on the data stage's features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from npubuild.config import Profile, Recipe
from npubuild.stages import atomic_path, write_json
from npubuild.terminal import epoch_logger, say


def train_fp32(recipe: Recipe, profile: Profile, features: Path, out_model: Path, out_log: Path,
               rows: np.ndarray | None = None) -> None:
    """The train stage; `rows`: train on those rows of the training split only (None: all)."""
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf

    _, keras = import_tf(seed=recipe.seed)
    x_train, y_train = get_kind(recipe.kind).load_split(recipe, features, "train")
    if rows is not None:
        x_train, y_train = x_train[rows], y_train[rows]
    x_val, y_val = get_kind(recipe.kind).load_split(recipe, features, "val")
    model = build_model(recipe)
    per_epoch = get_kind(recipe.kind).epoch_samples(recipe, features, rows, len(x_train))
    steps = profile.epochs * int(np.ceil(per_epoch / profile.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(profile.learning_rate, decay_steps=max(steps, 1), alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), **get_kind(recipe.kind).compile_args(recipe, keras))
    say(f"  training {recipe.architecture}: {model.count_params():,} parameters, "
          f"{len(x_train)} samples, {profile.epochs} epochs" +
        (f" of {per_epoch} samples" if per_epoch != len(x_train) else ""))
    validated = validation_epochs(profile.epochs)
    start = time.perf_counter()
    history = fit_epochs(recipe, model, features, x_train, y_train, epochs=profile.epochs,
                         batch_size=profile.batch_size, seed=[recipe.seed, 0], rows=rows,
                         validation_data=(x_val, get_kind(recipe.kind).fit_targets(recipe, y_val)),
                         validation_freq=validated, callbacks=[epoch_logger(keras, profile.epochs, "training")])
    seconds = time.perf_counter() - start
    note = timing_note(history.timing, "training")
    if note:
        say(note)
    batchnorm = recalibrate_batchnorm(model, x_train, profile, [recipe.seed, 0])
    with atomic_path(out_model) as tmp:
        model.save(tmp, include_optimizer=False)
    hist = {k: [round(float(v), 6) for v in vals] for k, vals in history.history.items()}
    write_json(out_log, {"parameters": int(model.count_params()), "samples": len(x_train),
                         "epochs": profile.epochs, "seconds": round(seconds, 1),
                         "samples_per_second": round(per_epoch * profile.epochs / seconds, 1),
                         **({"epoch_samples": per_epoch} if per_epoch != len(x_train) else {}),
                         "validated_epochs": validated, "timing": history.timing, "history": hist,
                         **({"batchnorm": batchnorm} if batchnorm else {})})


def recalibrate_batchnorm(model, x: np.ndarray, profile: Profile, seed: list[int]) -> dict | None:
    """Set each trainable BatchNormalization layer's moving mean and variance to the average of its batch
    statistics over `profile.batchnorm_samples` rows of `x` (drawn with `seed`, inputs as inference sees
    them), in batches of the profile's size; None when that is 0 or `model` has no such layer.

    Fitting leaves the moving averages to the last batches it saw (momentum 0.95: about 20 batches, with
    their augmentation), a noisy estimate that conversion folds into the weights. And tfmot's clustering
    wrapper calls the layer it wraps without the `training` flag, so during a clustering fine-tune batch
    normalization runs in inference mode on the statistics the model came with (never updating them):
    the pruned model's estimate is what clustering trains against, and the clustered weights need
    statistics of their own. Recomputed statistics raise the shipped kws model's INT8 accuracy (README,
    "Batch normalization statistics")."""
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    layers = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization) and m.trainable]
    n = min(profile.batchnorm_samples, len(x))
    if not layers or n <= 0:
        return None
    start = time.perf_counter()
    rows = np.sort(np.random.default_rng([*seed, 7]).permutation(len(x))[:n])
    momenta = [layer.momentum for layer in layers]
    try:
        for k, first in enumerate(range(0, n, profile.batch_size)):
            for layer in layers:  # moving <- moving * k/(k+1) + batch/(k+1): the running mean of the batches
                layer.momentum = k / (k + 1)
            model(x[rows[first:first + profile.batch_size]], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    seconds = time.perf_counter() - start
    say(f"  batch normalization: moving statistics of {len(layers)} layers from {n} training samples "
        f"({seconds:.0f} s)")
    return {"samples": n, "layers": len(layers), "seconds": round(seconds, 1)}


def validation_epochs(epochs: int) -> list[int]:
    """The epochs (from 1) after which training scores the validation split: every quarter of the run
    and the last (12 epochs: 3, 6, 9, 12). Nothing is chosen by these figures (they are the training
    log's), and scoring after every epoch cost 5-6% of the training time (the validation split is 15%
    of the training split for kws, 17% for quality, at a third of a training step's cost a sample)."""
    every = -(-epochs // 4)
    return sorted({*range(every, epochs + 1, every), epochs})


def fit_epochs(recipe: Recipe, model, features: Path, x: np.ndarray, y: np.ndarray, *, epochs: int,
               batch_size: int, seed: list[int], rows: np.ndarray | None = None, validation_data=None,
               validation_freq=1, callbacks=()):
    """`model.fit` on the training split, fed from a generator: epoch e takes the kind's inputs for e
    (`ModelKind.epoch_inputs`: augmentation drawn afresh, or `x` as it is) in an order drawn from
    (seed, e), so the run is a function of the seed. Batches are numpy slices handed to tf.data with
    prefetch (`invoke bench --part fit` compares it with a plain `model.fit`).
    `rows` are the rows of the split that `x` holds (None: all)."""
    import tensorflow as tf

    from npubuild.kinds import get_kind
    from npubuild.tfenv import array_batches, no_autotune

    kind = get_kind(recipe.kind)
    start = time.perf_counter()
    targets = kind.fit_targets(recipe, y)
    draw = kind.epoch_inputs(recipe, features, rows) or (lambda epoch, rng: x)
    inputs_ready = time.perf_counter()

    n = kind.epoch_samples(recipe, features, rows, len(y))  # inputs each epoch draws
    batches = int(np.ceil(n / batch_size))

    def batches_of_every_epoch():
        for epoch in range(epochs):
            rng = np.random.default_rng([*seed, epoch])
            inputs = draw(epoch, rng)
            # a kind may draw its own rows for the epoch: (inputs, the row of the split each one is)
            inputs, rows_of = inputs if isinstance(inputs, tuple) else (inputs, None)
            order = rng.permutation(n)
            for b in range(batches):
                pick = np.sort(order[b * batch_size:(b + 1) * batch_size])
                at = pick if rows_of is None else rows_of[pick]
                yield inputs[pick], (tuple(t[at] for t in targets) if several else targets[at])

    several = isinstance(targets, (list, tuple))  # one target array per output

    def target_spec(t):
        t = np.asarray(t)
        return tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype))

    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32),
            tuple(target_spec(t) for t in targets) if several else target_spec(targets))
    data = no_autotune(tf.data.Dataset.from_generator(batches_of_every_epoch, output_signature=spec).prefetch(2))
    if isinstance(validation_data, tuple):  # Keras's own batching of arrays (32), without its autotuning
        validation_data = array_batches(validation_data, 32)
    clock = _EpochClock()
    history = model.fit(data, steps_per_epoch=batches, validation_data=validation_data,
                        validation_freq=validation_freq, epochs=epochs, verbose=0,
                        callbacks=[*callbacks, clock.callback()])
    end = time.perf_counter()
    history.timing = {  # where the fit's time went (the stage logs keep it: `timing_note`)
        "inputs_seconds": round(inputs_ready - start, 2),
        "before_first_epoch_seconds": round((clock.begins or [end])[0] - inputs_ready, 2),
        "epoch_seconds": [round(e - b, 2) for b, e in zip(clock.begins, clock.ends, strict=False)],
        "after_last_epoch_seconds": round(end - (clock.ends or [end])[-1], 2),
    }
    return history


class _EpochClock:
    """When each epoch began and ended (after every other callback's hooks), for `fit_epochs`' timing."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []

    def callback(self):
        from npubuild.tfenv import import_tf

        _, keras = import_tf()
        clock = self

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.begins.append(time.perf_counter())

            def on_epoch_end(self, epoch, logs=None):
                clock.ends.append(time.perf_counter())

        return Clock()


def timing_note(timing: dict, what: str) -> str | None:
    """A log line when a fit spent more than 10 s outside its epochs (loading its inputs, or before the
    first epoch or after the last), else None."""
    outside = timing["inputs_seconds"] + timing["before_first_epoch_seconds"] + timing["after_last_epoch_seconds"]
    if outside <= 10.0:
        return None
    return (f"  {what}: {outside:.0f} s outside the epochs (inputs {timing['inputs_seconds']:.0f} s, before the first "
            f"epoch {timing['before_first_epoch_seconds']:.0f} s, after the last {timing['after_last_epoch_seconds']:.0f} s)")


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
