"""The deployment tree: which tfmot scheme each step uses, and the check of the INT8 weights."""

from __future__ import annotations

import pytest

from npubuild.config import load_recipe
from npubuild.optimization_recipes import RECIPES, chain_name
from npubuild.optimize import expectations, plan_recipe, verify_int8
from npubuild.weights import LayerWeights

from .conftest import ROOT

RECIPE = load_recipe(ROOT / "models" / "kws.toml")


@pytest.mark.parametrize(("recipe", "schemes"), [
    ("ptq", []),
    ("qat", ["qat"]),
    ("prune", ["pruning"]),
    ("pqat", ["pruning", "pqat"]),
    ("cluster", ["clustering"]),
    ("cqat", ["clustering", "cqat"]),
    ("prune_cluster", ["pruning", "sparsity_preserving_clustering"]),
    ("pcqat", ["pruning", "sparsity_preserving_clustering", "pcqat"]),
])
def test_each_step_keeps_what_came_before(recipe, schemes):
    assert [p.scheme for p in plan_recipe(recipe)] == schemes


def test_recipes_share_chains():
    chains = {chain_name(RECIPES[r][:i + 1]) for r in RECIPES for i in range(len(RECIPES[r]))}
    # 8 recipes, but only 7 distinct trained chains: prune, prune+qat, cluster, cluster+qat,
    # prune+cluster, prune+cluster+qat, qat
    assert chains == {"qat", "prune", "prune+qat", "cluster", "cluster+qat", "prune+cluster", "prune+cluster+qat"}


def layer(name, op="CONV_2D", sparsity=0.5, per_channel=8):
    return LayerWeights(layer=name, op=op, shape=(4, 1, 1, 4), parameters=16, sparsity=sparsity,
                        distinct_per_tensor=per_channel * 3, max_distinct_per_channel=per_channel,
                        max_distinct_nonzero_per_channel=per_channel - 1)


def test_expectations_follow_the_steps():
    assert expectations(RECIPE, "ptq") == {"min_sparsity": None, "max_values_per_channel": None}
    assert expectations(RECIPE, "pcqat") == {"min_sparsity": 0.475, "max_values_per_channel": 8}
    assert expectations(RECIPE, "cqat") == {"min_sparsity": None, "max_values_per_channel": 8}


def test_kept_gains_pass_and_depthwise_is_not_a_failure():
    expect = expectations(RECIPE, "pcqat")
    layers = [layer("conv2d"), layer("depthwise_conv2d", op="DEPTHWISE_CONV_2D", sparsity=0.0, per_channel=9)]
    assert verify_int8(layers, expect, "m.tflite") == []


def test_lost_sparsity_names_the_layer():
    problems = verify_int8([layer("conv2d"), layer("conv2d_1", sparsity=0.40)], expectations(RECIPE, "prune"),
                           "m.tflite")
    assert problems == ["m.tflite: layer conv2d_1 has sparsity 0.400, below 95% of the pruning target (0.475)"]


def test_too_many_values_names_the_layer():
    problems = verify_int8([layer("scores", op="FULLY_CONNECTED", per_channel=9)], expectations(RECIPE, "cluster"),
                           "m.tflite")
    assert problems == ["m.tflite: layer scores has 9 distinct weight values in an output channel, "
                        "more than its 8 clusters"]


def test_batchnorm_statistics_are_the_mean_of_the_drawn_batches():
    """`recalibrate_batchnorm` sets a layer's moving mean and variance to the average of its batch
    statistics over the drawn rows (the layer's input computed with batch statistics before it), leaves
    frozen layers and the momentum as they were, and does nothing when the profile asks for no samples."""
    import dataclasses

    import numpy as np

    from npubuild.tfenv import import_tf
    from npubuild.train import recalibrate_batchnorm

    _, keras = import_tf(seed=3)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="d1")(inputs)
    normed = keras.layers.BatchNormalization(momentum=0.9, name="bn")(hidden)
    frozen = keras.layers.BatchNormalization(name="frozen")
    out = keras.layers.Dense(2)(frozen(normed))
    frozen.trainable = False
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).normal(2.0, 3.0, (50, 4)).astype(np.float32)
    profile = dataclasses.replace(RECIPE.profile("smoke"), batchnorm_samples=40, batch_size=10)
    before = [w.copy() for w in model.get_weights()]
    assert recalibrate_batchnorm(model, x, dataclasses.replace(profile, batchnorm_samples=0), [1]) is None
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))

    result = recalibrate_batchnorm(model, x, profile, [1])
    assert result["samples"] == 40 and result["layers"] == 1
    rows = np.sort(np.random.default_rng([1, 7]).permutation(50)[:40])
    h = keras.Model(inputs, hidden)(x[rows]).numpy().reshape(4, 10, 3)  # the four batches the layer saw
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=1).mean(axis=0), rtol=1e-4)
    assert bn.momentum == 0.9
    assert np.array_equal(frozen.moving_mean.numpy(), np.zeros(3, np.float32))
    # the other weights as they were
    assert np.array_equal(model.get_layer("d1").kernel.numpy(), before[0])
    # more samples asked for than the split has: all of it
    assert recalibrate_batchnorm(model, x, dataclasses.replace(profile, batchnorm_samples=500), [1])["samples"] == 50


def test_steps_wrap_the_layers_they_change_and_name_those_tfmot_cannot(capsys):
    """Pruning wraps the layers with prunable weights (Dense, Conv2D: not BatchNormalization, not weightless
    layers), clustering every supported layer with weights, both inside a nested model too; a layer with
    weights that tfmot does not support is left as it is and named, and the model still fine-tunes."""
    import numpy as np

    from npubuild.optimize import StepPlan, wrap_for_step
    from npubuild.tfenv import import_tf

    _, keras = import_tf(seed=5)

    class Scale(keras.layers.Layer):  # weights, but tfmot knows nothing of it
        def build(self, input_shape):
            self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(8, name="inner_dense")(inner_in), name="inner")
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = Scale(name="scale")(inner(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    x_train = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    y_train = np.random.default_rng(1).integers(0, 2, 32)

    def wrapped_names(m):
        found = []
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                found += wrapped_names(layer)
            elif hasattr(layer, "layer"):
                found.append(layer.layer.name)
        return sorted(found)

    expected = {"prune": ["dense", "inner_dense", "out"], "cluster": ["bn", "dense", "inner_dense", "out"]}
    for step, names in expected.items():
        fresh = keras.models.clone_model(model)
        fresh.set_weights(model.get_weights())
        wrapped = wrap_for_step(fresh, StepPlan(step, ()), RECIPE.optimize, steps=4)
        assert wrapped_names(wrapped.model) == names, step
        assert wrapped.details["not_optimized"] == ["scale (Scale)"]
        assert "layer scale (Scale) is not supported by tfmot; left as it is" in capsys.readouterr().out
        wrapped.model.compile(optimizer=keras.optimizers.Adam(1e-3),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        wrapped.model.fit(x_train, y_train, batch_size=8, epochs=1, verbose=0, callbacks=wrapped.callbacks)
        assert len(wrapped.strip(wrapped.model).layers) == len(model.layers)
