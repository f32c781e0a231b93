"""The deployment tree: which tfmot scheme each step uses, and the check of the INT8 weights."""

from __future__ import annotations

import pytest

from npubuild.config import load_recipe
from npubuild.optimize import expectations, plan_recipe, verify_int8
from npubuild.techniques import RECIPES, chain_name
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
