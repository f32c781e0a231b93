"""Model kinds are plugins: no generic module asks which kind it holds; a kind written in a test runs
through the whole smoke build; your own Keras model (the digits example) goes through every recipe;
bad input for the keras kind is one line naming the file, with nothing built earlier touched."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from npubuild.errors import BuildError
from npubuild.kinds import KINDS
from npubuild.pipeline import build, compare
from npubuild.stages import CODE_ROOT

from .conftest import TARGET, make_project, tree_hashes


def test_no_generic_module_branches_on_a_kind():
    """Outside kinds/, no module names a kind or compares a recipe's kind with anything."""
    names = [k for k in KINDS if k != "keras"]  # "keras" is also the name of the [keras] table
    for path in sorted(CODE_ROOT.rglob("*.py")):
        if "kinds" in path.relative_to(CODE_ROOT).parts:
            continue
        source = path.read_text()
        for name in names:
            assert name not in source, (path.name, name)
        assert not re.search(r"\b(task|kind)\s*[!=]=\s*[\"']|[\"']\s*[!=]=\s*[\w.]*\b(task|kind)\b", source), path.name


TOY_KIND = '''
"""A kind written outside the package: 16 random features, three classes, a dense classifier."""
import numpy as np

from npubuild.kinds.base import DataPlan, ModelKind


class ToyKind(ModelKind):
    tables = ()

    def data_plan(self, recipe, profile, data_dir, out, log):
        def action():
            from npubuild.stages import atomic_output

            rng = np.random.default_rng(recipe.seed)
            centres = rng.normal(size=(3, 16)) * 2
            arrays = {}
            for split, n in (("train", 300), ("val", 60), ("test", 60)):
                y = rng.integers(0, 3, n).astype(np.int32)
                arrays[f"x_{split}"] = (centres[y] + rng.normal(size=(n, 16))).astype(np.float32)
                arrays[f"y_{split}"] = y
            with atomic_output(out) as f:
                np.savez(f, **arrays)

        return DataPlan({"toy": 1, "seed": recipe.seed}, ("numpy",), action, ())

    def build_model(self, recipe):
        from npubuild.tfenv import import_tf

        _, keras = import_tf()
        inputs = keras.Input(shape=(16,))
        x = keras.layers.Dense(32, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
'''


@pytest.mark.slow
def test_a_kind_defined_outside_the_package_runs_through_the_smoke_build(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toykind.py").write_text(TOY_KIND)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    root = make_project(tmp_path / "project")
    for toml in (root / "models").glob("*.toml"):
        toml.unlink()
    (root / "models" / "toy.toml").write_text(textwrap.dedent("""
        name = "toy"
        description = "a kind of its own"
        kind = "toykind:ToyKind"
        labels = ["a", "b", "c"]
        ship = "prune_cluster"
        seed = 3
        [optimize]
        target_sparsity = 0.5
        prune_updates = 4
        prune_frequency = 0
        prune_learning_rate = 0.001
        clusters = 8
        centroid_init = "linear"
        cluster_learning_rate = 0.001
        qat_learning_rate = 0.001
        [profiles.smoke]
        epochs = 3
        batch_size = 32
        learning_rate = 0.01
        prune_epochs = 2
        cluster_epochs = 1
        qat_epochs = 1
        finetune_samples = 0
        """))
    summary = build(root, model="all", target=TARGET, profile="smoke", log=lambda s: None)
    assert all(r.ran for r in summary.results)
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["toy"] and report["total"]["fits"]
    toy = report["models"][0]
    assert toy["cpu_ops"] == 0 and toy["accuracy"]["int8"] > 0.8  # well-separated classes
    weights = json.loads((root / "build" / "smoke" / "toy" / "builtin" / "prune_cluster" / "weights.json").read_text())
    assert weights["sparsity_prunable"] >= 0.475 and weights["max_values_per_channel"] <= 8
    header = (root / "firmware_assets" / TARGET / "toy" / "toy_meta.h").read_text()
    assert '#define TOY_LABELS {"a", "b", "c"}' in header


@pytest.mark.slow
def test_the_digits_example_goes_through_every_recipe(tmp_path):
    """`invoke build --model digits` and `invoke compare --model digits` (smoke): every recipe's INT8
    file verified (sparsity, values per channel), compiled, compared."""
    root = make_project(tmp_path / "project", examples=True)
    build(root, model="digits", target=TARGET, profile="smoke", log=lambda s: None)
    assert (root / "firmware_assets" / TARGET / "digits" / "digits_model.c").is_file()
    lines: list[str] = []
    compare(root, model="digits", targets=TARGET, profile="smoke", log=lines.append)
    # the sweep says how far it is: every model stage numbered, in order
    running = [line for line in lines if " running (stage " in line]
    total = int(running[0].split(" of digits)")[0].split("/")[1])
    assert [int(line.split("(stage ")[1].split("/")[0]) for line in running] == sorted(
        int(line.split("(stage ")[1].split("/")[0]) for line in running) and total > 3 * 8  # train, the chains, and convert, evaluate, verify of 8 recipes
    result = json.loads((root / "firmware_assets" / "compare" / "digits.json").read_text())
    recipes = {r["recipe"]: r for r in result["recipes"]}
    assert set(recipes) == {"ptq", "qat", "prune", "pqat", "cluster", "cqat", "prune_cluster", "pcqat"}
    for name, r in recipes.items():
        assert r["targets"][TARGET]["cpu_ops"] == 0, name
        if "prune" in r["steps"]:
            assert r["weights"]["sparsity_prunable"] >= 0.475, name
        if "cluster" in r["steps"]:
            assert r["weights"]["max_values_per_channel"] <= 8, name


# --------------------------------------------------------------------------- bad input, keras kind


def _keras_project(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "project", examples=True)
    for toml in (root / "models").glob("*.toml"):
        if toml.stem != "digits":
            toml.unlink()
    return root


def _arrays(n=(20, 6, 6), shape=(8, 8, 1), classes=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        out[f"x_{split}"] = rng.random((count, *shape)).astype(np.float32)
        out[f"y_{split}"] = rng.integers(0, classes, count).astype(np.int32)
    return out


BAD = {
    "model file that does not load": ("model", "broken.h5", lambda d: (d / "broken.h5").write_bytes(b"not a model"),
                                      "broken.h5: not a loadable tf_keras model"),
    "missing model file": ("model", "nothere.h5", lambda d: None,
                           "field 'keras.model' names 'nothere.h5', which does not exist"),
    "missing data file": ("data", "nothere.npz", lambda d: None,
                          "field 'keras.data' names 'nothere.npz', which does not exist"),
    "x and y lengths differ": ("data", "bad.npz", lambda d: np.savez(d / "bad.npz", **{**_arrays(), "y_val": np.zeros(5, np.int32)}),
                               "bad.npz: x_val has 6 samples but y_val has 5"),
    "labels out of range": ("data", "bad.npz", lambda d: np.savez(d / "bad.npz", **{**_arrays(), "y_test": np.full(6, 12, np.int32)}),
                            "bad.npz: y_test has labels outside 0..9"),
    "a missing array": ("data", "bad.npz", lambda d: np.savez(d / "bad.npz", **{k: v for k, v in _arrays().items() if k != "x_train"}),
                        "bad.npz: missing array 'x_train'"),
    "several outputs": ("model", "two.py:build_model", lambda d: (d / "two.py").write_text(textwrap.dedent('''
        def build_model():
            from npubuild.tfenv import import_tf
            _, keras = import_tf()
            i = keras.Input(shape=(8, 8, 1))
            f = keras.layers.Flatten()(i)
            return keras.Model(i, [keras.layers.Dense(10, activation="softmax")(f), keras.layers.Dense(1)(f)])
        ''')), "two.py: the model has 2 outputs; the keras kind takes one"),
}


@pytest.mark.slow
def test_bad_input_for_your_own_model_is_one_line_and_touches_nothing(tmp_path):
    root = _keras_project(tmp_path)
    build(root, model="digits", target=TARGET, profile="smoke", log=lambda s: None)
    before = {**tree_hashes(root / "build"), **{f"assets/{k}": v for k, v in tree_hashes(root / "firmware_assets").items()}}
    toml = root / "models" / "digits.toml"
    original = toml.read_text()
    for case, (field, value, make, expected) in BAD.items():
        make(root / "models")
        toml.write_text(re.sub(rf'(?m)^{field} = ".*"', f'{field} = "{value}"', original))
        with pytest.raises(BuildError) as err:
            build(root, model="digits", target=TARGET, profile="smoke", log=lambda s: None)
        message = str(err.value)
        assert expected in message and "\n" not in message, (case, message)
        assert message.startswith(str(root / "models")), (case, message)
    toml.write_text(original)
    after = {**tree_hashes(root / "build"), **{f"assets/{k}": v for k, v in tree_hashes(root / "firmware_assets").items()}}
    assert {k: v for k, v in after.items() if not k.endswith(".stamp.json")} == \
        {k: v for k, v in before.items() if not k.endswith(".stamp.json")}
