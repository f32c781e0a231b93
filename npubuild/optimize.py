"""Collaborative optimization with tfmot: techniques as named steps, recipes as lists of steps.

Each step starts from the previous step's stripped model, loaded fresh from its
file (never the same model object twice: tfmot's wrappers damage the model they
are given), and knows what the steps before it gained, so it keeps it:

| step    | after nothing        | after prune                          | after cluster (± prune)                      |
|---------|----------------------|--------------------------------------|----------------------------------------------|
| prune   | magnitude pruning    | -                                    | -                                            |
| cluster | weight clustering    | sparsity-preserving clustering       | -                                            |
| qat     | quantization-aware   | PQAT (prune-preserving QAT)          | CQAT / PCQAT (cluster[+sparsity]-preserving) |
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.config import OptimizeSettings, Profile, Recipe
from npubuild.errors import BuildError
from npubuild.optimization_recipes import RECIPES, STEPS
from npubuild.stages import atomic_path, write_json
from npubuild.terminal import epoch_logger, say
from npubuild.weights import PRUNABLE_OPS


@dataclass(frozen=True)
class StepPlan:
    """One step of a chain: what it is and what came before it."""

    step: str
    before: tuple[str, ...]

    @property
    def chain(self) -> tuple[str, ...]:
        return (*self.before, self.step)

    @property
    def scheme(self) -> str:
        """The tfmot scheme this step uses, given what came before."""
        if self.step == "cluster":
            return "sparsity_preserving_clustering" if "prune" in self.before else "clustering"
        if self.step == "qat":
            if "cluster" in self.before:
                return "pcqat" if "prune" in self.before else "cqat"
            return "pqat" if "prune" in self.before else "qat"
        return "pruning"


def plan_recipe(recipe_name: str) -> list[StepPlan]:
    steps = RECIPES[recipe_name]
    return [StepPlan(step, steps[:i]) for i, step in enumerate(steps)]


def apply_qat(model, scheme: str, stock_cqat: bool = False):
    """Wrap `model` for quantization-aware training with the scheme that keeps earlier gains.

    CQAT/PCQAT use tfmot's scheme with its per-channel clustering vectorized
    (`fast_cqat`: the same results, several times faster); `stock_cqat` selects tfmot's own
    for comparison (tests, benchmark)."""
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    if scheme == "qat":
        return qk.quantize_model(model)
    if scheme == "pqat":
        collaborative = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    elif stock_cqat:
        collaborative = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity=scheme == "pcqat")
    else:
        from npubuild.fast_cqat import FastClusterPreserveQuantizeScheme

        collaborative = FastClusterPreserveQuantizeScheme(preserve_sparsity=scheme == "pcqat")
    return qk.quantize_apply(qk.quantize_annotate_model(model), collaborative)


def load_chain_model(steps: tuple[str, ...], model_path: Path, before_path: Path | None = None):
    """The Keras model at the end of `steps`; after a QAT step, rebuilt from the model
    before it with the same scheme, then given the fine-tuned weights."""
    from npubuild.train import load_keras_model

    if not steps or steps[-1] != "qat":
        return load_keras_model(model_path)
    model = apply_qat(load_keras_model(before_path), StepPlan(steps[-1], steps[:-1]).scheme)
    model.load_weights(model_path)
    return model


def _fine_tune(recipe: Recipe, model, keras, x, y, epochs: int, batch_size: int, learning_rate: float,
               callbacks=(), *, features: Path, rows: np.ndarray | None, seed: list[int]) -> dict:
    """Fit and report the history with the throughput of the fit itself (samples per second)."""
    from npubuild.kinds import get_kind
    from npubuild.train import fit_epochs, timing_note

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **get_kind(recipe.kind).compile_args(recipe, keras))
    start = time.perf_counter()
    history = fit_epochs(recipe, model, features, x, y, epochs=epochs, batch_size=batch_size, seed=seed, rows=rows,
                         callbacks=[*callbacks, epoch_logger(keras, epochs, "fine-tuning")])
    seconds = time.perf_counter() - start
    note = timing_note(history.timing, "fine-tuning")
    if note:
        say(note)
    per_epoch = get_kind(recipe.kind).epoch_samples(recipe, features, rows, len(x))
    return {"seconds": round(seconds, 1), "samples_per_second": round(per_epoch * epochs / seconds, 1),
            "timing": history.timing,
            "history": {k: [round(float(v), 6) for v in vals] for k, vals in history.history.items()}}


def pruning_schedule(settings: OptimizeSettings, steps: int):
    """Polynomial decay from 0 to the target sparsity over the first 70% of fine-tuning,
    updating `prune_updates` times (or every `prune_frequency` steps if set)."""
    import tensorflow_model_optimization as tfmot

    end_step = max(1, int(0.7 * steps))
    frequency = settings.prune_frequency or max(1, end_step // settings.prune_updates)
    end_step = max(frequency, (end_step // frequency) * frequency)
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=settings.target_sparsity,
                                                begin_step=0, end_step=end_step, frequency=frequency)


@dataclass
class Wrapped:
    """A model ready to fine-tune for one step, and how to finish it."""

    model: object
    learning_rate: float
    callbacks: list
    strip: object  # callable: fine-tuned wrapped model -> model to save
    details: dict


def _wrap(model, wrap, supports, wanted, what: str) -> tuple[object, list[str]]:
    """`model` with each layer `wanted` wrapped on its own (`wrap(layer)`: tfmot's per-layer pattern), nested
    models layer by layer, the other layers kept as they are; layers with weights that tfmot does not
    `support` are named: a model of your own with a layer tfmot cannot handle is optimized where it can
    be, and says where not.

    tfmot's whole-model call wraps every layer, weightless ones too (a ReLU, a reshape), and each wrapper
    adds its step counter, mask or cluster updates to the training graph, which slows every step;
    wrapping only the layers that are optimized gives the same weights bit for bit, faster."""
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    skipped = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        if wanted(layer):
            return wrap(layer)
        if layer.trainable_weights and not supports(layer):
            skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    wrapped = keras.models.clone_model(model, clone_function=clone)
    for name in skipped:
        say(f"  {what}: layer {name} is not supported by tfmot; left as it is")
    return wrapped, skipped


def _prunes(layer) -> bool:
    """Whether pruning changes `layer`: a kind tfmot's registry gives prunable weights (Conv2D, Dense; not
    DepthwiseConv2D, BatchNormalization or weightless layers), or a layer that names its own."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    return PruneRegistry.supports(layer) and bool(PruneRegistry._LAYERS_WEIGHTS_MAP.get(type(layer), True))


def wrap_for_step(model, plan: StepPlan, settings: OptimizeSettings, steps: int) -> Wrapped:
    """Wrap `model` (a fresh object, never reused) for the step in `plan`."""
    import tensorflow_model_optimization as tfmot

    s = settings
    if plan.step == "prune":
        from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

        schedule = pruning_schedule(s, steps)
        wrapped, skipped = _wrap(model, lambda m: tfmot.sparsity.keras.prune_low_magnitude(m, pruning_schedule=schedule),
                                 PruneRegistry.supports, _prunes, "pruning")
        return Wrapped(wrapped, s.prune_learning_rate, [tfmot.sparsity.keras.UpdatePruningStep()],
                       tfmot.sparsity.keras.strip_pruning,
                       {"target_sparsity": s.target_sparsity, "end_step": int(schedule.end_step),
                        "frequency": int(schedule.frequency), "steps": steps, "not_optimized": skipped})
    if plan.step == "cluster":
        cluster = tfmot.clustering.keras
        init = {"kmeans_plus_plus": cluster.CentroidInitialization.KMEANS_PLUS_PLUS,
                "linear": cluster.CentroidInitialization.LINEAR,
                "density_based": cluster.CentroidInitialization.DENSITY_BASED}[s.centroid_init]
        from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
            ClusteringRegistry,
        )

        preserve = "prune" in plan.before
        # Every supported layer with weights is wrapped, batch normalization too: tfmot's wrapper calls it
        # without the training flag, so it runs in inference mode while clustering fine-tunes (kept as
        # tfmot does it; `train.recalibrate_batchnorm` gives it statistics before and after).
        wrapped, skipped = _wrap(model, lambda m: cluster.cluster_weights(
            m, number_of_clusters=s.clusters, cluster_centroids_init=init, preserve_sparsity=preserve),
            ClusteringRegistry.supports, lambda layer: bool(layer.weights) and ClusteringRegistry.supports(layer),
            "clustering")
        return Wrapped(wrapped, s.cluster_learning_rate, [], cluster.strip_clustering,
                       {"clusters": s.clusters, "centroid_init": s.centroid_init, "preserve_sparsity": preserve,
                        "not_optimized": skipped})
    return Wrapped(apply_qat(model, plan.scheme), s.qat_learning_rate, [], lambda m: m, {"scheme": plan.scheme})


def run_step(recipe: Recipe, profile: Profile, plan: StepPlan, source: Path, features: Path,
             out_model: Path, out_log: Path) -> None:
    """Apply one step to the model in `source`, fine-tune it, strip it, save it."""
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf
    from npubuild.train import load_keras_model, recalibrate_batchnorm

    _, keras = import_tf(seed=recipe.seed)
    x, y = get_kind(recipe.kind).load_split(recipe, features, "train")
    pick = None
    if profile.finetune_samples and len(x) > profile.finetune_samples:
        pick = np.sort(np.random.default_rng([recipe.seed, STEPS.index(plan.step)]).permutation(len(x))
                       [:profile.finetune_samples])
        x, y = x[pick], y[pick]
    model = load_keras_model(source)  # qat is always last: `source` is a whole saved model
    epochs = profile.step_epochs(plan.step)
    per_epoch = get_kind(recipe.kind).epoch_samples(recipe, features, pick, len(x))
    steps = epochs * int(np.ceil(per_epoch / profile.batch_size))
    say(f"  {plan.scheme}: {len(x)} samples, {epochs} epochs")
    wrapped = wrap_for_step(model, plan, recipe.optimize, steps)
    seed = [recipe.seed, 1 + STEPS.index(plan.step), len(plan.before)]
    fit = _fine_tune(recipe, wrapped.model, keras, x, y, epochs, profile.batch_size, wrapped.learning_rate,
                     wrapped.callbacks, features=features, rows=pick, seed=seed)
    final = wrapped.strip(wrapped.model)
    # QAT keeps the moving averages: a forward pass in training mode would move its quantizers' ranges too
    batchnorm = None if plan.step == "qat" else recalibrate_batchnorm(final, x, profile, seed)
    with atomic_path(out_model) as tmp:
        if plan.step == "qat":
            # Keras cannot reload the collaborative schemes' quantizers from a saved model
            # (the weight counts differ), so QAT keeps weights only; see load_chain_model.
            final.save_weights(tmp)
        else:
            final.save(tmp, include_optimizer=False)
    write_json(out_log, {"step": plan.step, "scheme": plan.scheme, "chain": list(plan.chain), "clips": len(x),
                         "epochs": epochs, **wrapped.details, **fit, **({"batchnorm": batchnorm} if batchnorm else {})})


# --------------------------------------------------------------------------- verification


def expectations(recipe: Recipe, recipe_name: str) -> dict:
    """What the INT8 file of `recipe_name` must show, from its steps."""
    steps = RECIPES[recipe_name]
    s = recipe.optimize
    return {
        "min_sparsity": round(0.95 * s.target_sparsity, 6) if "prune" in steps else None,
        "max_values_per_channel": s.clusters if "cluster" in steps else None,
    }


def verify_int8(layers: list, expect: dict, tflite_name: str) -> list[str]:
    """Problems with the INT8 weights, one line per layer; empty when the chain kept its gains.

    Sparsity-preserving clustering keeps zero as one of the cluster values, so the
    limit on distinct values per channel is the number of clusters in every recipe.
    """
    problems = []
    for lw in layers:
        if lw.op not in PRUNABLE_OPS:
            continue
        if expect["min_sparsity"] is not None and lw.sparsity < expect["min_sparsity"]:
            problems.append(f"{tflite_name}: layer {lw.layer} has sparsity {lw.sparsity:.3f}, below 95% of the "
                            f"pruning target ({expect['min_sparsity']:.3f})")
        limit = expect["max_values_per_channel"]
        if limit is not None and lw.max_distinct_per_channel > limit:
            problems.append(f"{tflite_name}: layer {lw.layer} has {lw.max_distinct_per_channel} distinct weight "
                            f"values in an output channel, more than its {limit} clusters")
    return problems


def verify_recipe(recipe: Recipe, recipe_name: str, tflite: Path, out: Path) -> None:
    from npubuild.weights import WEIGHTED_OPS, measure_weights, overall_sparsity

    layers = measure_weights(tflite)
    expect = expectations(recipe, recipe_name)
    problems = verify_int8(layers, expect, tflite.name)
    prunable = [lw for lw in layers if lw.op in PRUNABLE_OPS]
    summary = {
        "recipe": recipe_name, "steps": list(RECIPES[recipe_name]), "expect": expect,
        "sparsity_prunable": overall_sparsity(layers), "sparsity_all": overall_sparsity(layers, tuple(WEIGHTED_OPS)),
        "max_values_per_channel": max((lw.max_distinct_per_channel for lw in prunable), default=0),
        "max_values_per_tensor": max((lw.distinct_per_tensor for lw in prunable), default=0),
        "not_optimizable": sorted(lw.layer for lw in layers if lw.op not in PRUNABLE_OPS),
        "layers": [lw.to_json() for lw in layers],
    }
    if problems:
        raise BuildError(f"recipe {recipe_name} lost what its steps gained: {problems[0]}"
                         + (f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""))
    write_json(out, summary)
