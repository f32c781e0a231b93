"""What differs between kinds of model, as one interface; the generic stages call it and never ask
which kind they hold.

`ModelKind`'s own methods are those of a single-output classifier (one softmax, labels are class
indices, top-1 accuracy): a kind overrides what it does differently. A kind is named by a recipe's
`kind` field (`kinds.get_kind`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.report_text import percent


class BaseImagesDir(type(Path())):
    """A folder given with `--base-images`: clean photos a kind degrades into its training data, not a
    labelled folder (`--data-dir`). A path like any other; its type tells the two apart."""


class WithBuiltinData(type(Path())):
    """A labelled folder (`--data-dir`) to train on together with the kind's built-in data (`--voice-bank`
    for keyword spotting): the data stage mixes them (`ModelKind.mixes_builtin_data`)."""


@dataclass
class DataPlan:
    """How a kind makes its data stage: what the features depend on, and the action writing them."""

    params: dict
    tools: tuple[str, ...]
    action: Callable[[], None]
    code: tuple[str, ...]
    inputs: tuple[Path, ...] = ()  # files the action reads besides the recipe's data (the built-in data)


@dataclass
class Folder:
    """What `invoke evaluate` read from a labelled folder: model inputs, labels, what was skipped."""

    x: np.ndarray
    y: np.ndarray
    read: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> files
    converted: dict[str, int] = field(default_factory=dict)  # policy -> files it changed
    selection: str = ""

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)


def problem_of(error: BuildError, path: Path) -> str:
    """The problem part of a one-line error (`<path>: <problem> (<detail>)`)."""
    text = str(error).removeprefix(f"{path}: ")
    return re.sub(r" \(.*\)$", "", text)


class ModelKind:
    """A kind of model. Class attributes describe its recipe; methods do what differs."""

    name = ""
    label_field = "labels"  # the recipe field naming the outputs (classes, or heads)
    tables: tuple[str, ...] = ()  # recipe tables the kind needs (e.g. "frontend")
    profile_sizes: tuple[str, ...] = ()  # profile fields that size its dataset (must be positive)
    architectures: tuple[str, ...] = ()  # `architecture` values it builds; empty: the recipe names its model
    takes_base_images = False  # builds its data from a folder of clean photos (`--base-images`)
    mixes_builtin_data = False  # can train on a labelled folder and its built-in data together
    metric_note = "Accuracy is top-1"
    folder_help = "a labelled folder"

    # ------------------------------------------------------------------ recipe

    def check_recipe(self, recipe) -> tuple[str, str] | None:
        """(field, problem) for a kind-specific problem in a loaded recipe, or None."""
        return None

    # ------------------------------------------------------------------ data

    def data_plan(self, recipe, profile, data_dir: Path | None, out: Path, log, builtin: Path | None = None) -> DataPlan:
        """How the data stage makes `out`. `builtin`: with a `WithBuiltinData` folder, the built-in data
        stage's file (made first), to mix in."""
        raise NotImplementedError

    def load_split(self, recipe, features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs (float32) and labels of one split of the data stage's file."""
        with np.load(features) as d:
            return d[f"x_{split}"].astype(np.float32), d[f"y_{split}"]

    def representative(self, recipe, features: Path, count: int, seed: int) -> np.ndarray:
        """Inputs for post-training quantization, from the training split."""
        x, _ = self.load_split(recipe, features, "train")
        return x[np.sort(np.random.default_rng(seed).permutation(len(x))[:count])]

    # ------------------------------------------------------------------ model and training

    def build_model(self, recipe):
        raise NotImplementedError

    def model_params(self, recipe) -> dict:
        """What the untrained model depends on beyond the recipe's fields (part of the train stage's key)."""
        return {}

    def compile_args(self, recipe, keras) -> dict:
        return {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}

    def fit_targets(self, recipe, y: np.ndarray):
        """Labels as Keras wants them for the model's outputs."""
        return y

    def epoch_inputs(self, recipe, features: Path, rows: np.ndarray | None):
        """None when every epoch takes the training split's inputs as they are (`train.fit_epochs` only
        shuffles them); otherwise a function (epoch, rng) -> the inputs of that epoch, row for row the
        training split (`rows` of it when given): augmentation drawn afresh every epoch, with `rng`
        (seeded per epoch). The function may also return (inputs, rows): inputs as many as the split's
        rows, each the row of the split (of `rows` when given) whose labels it takes, for a kind that
        draws its own mix of rows per epoch."""
        return None

    def epoch_samples(self, recipe, features: Path, rows: np.ndarray | None, rows_count: int) -> int:
        """How many samples one training epoch draws (`epoch_inputs`); the split's rows unless the kind
        draws its own."""
        return rows_count

    def search_space(self, recipe, technique: str) -> dict[str, tuple]:
        """Extra settings `invoke fit` may search for `technique`, beyond the optimization steps' own:
        {"<recipe table>.<field>": values}, the recipe's current value included (e.g. a width
        multiplier, "image.alpha"). Such settings shape the FP32 model: a candidate with other values
        trains its own. Empty: the kind has none."""
        return {}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, recipe, model, tflite: Path, features: Path, out: Path) -> None:
        """The evaluate stage: `model` is the Keras model the INT8 file came from."""
        from npubuild.classifier_accuracy import evaluate_classifier

        x_test, y_test = self.load_split(recipe, features, "test")
        evaluate_classifier(list(recipe.labels), model, tflite, x_test, y_test, out)

    def builtin_sets(self, recipe, features: Path) -> dict[str, str]:
        """`invoke evaluate` without a folder: {split: what it is}."""
        return {"test": "test split"}

    def read_folder(self, recipe, data_dir: Path, features: Path) -> Folder:
        raise BuildError(f"{data_dir}: {recipe.name} ({self.name}) has no labelled-folder reader")

    def score(self, recipe, model, tflite: Path, x: np.ndarray, y: np.ndarray, evaluation: dict) -> dict:
        """FP32 and INT8 metrics of one labelled set."""
        from npubuild.classifier_accuracy import classification_metrics, int8_scores
        from npubuild.tfenv import array_batches

        labels = list(recipe.labels)
        fp32 = model.predict(array_batches(x, 256), verbose=0).argmax(axis=1)
        int8 = int8_scores(tflite, x).argmax(axis=1)
        return {"count": int(len(y)), "fp32": classification_metrics(labels, y, fp32),
                "int8": classification_metrics(labels, y, int8),
                "int8_fp32_agreement": round(float(np.mean(fp32 == int8)), 6) if len(y) else 0.0}

    def evaluation_stages(self, recipe, profile: str, paths, technique: str, log) -> list:
        """Cached stages `invoke evaluate` runs on the built-in data before `summarize` reads their
        outputs (e.g. a model trained without one speech engine)."""
        return []

    def summarize(self, recipe, result: dict, paths, technique: str) -> None:
        """Add kind-specific figures to an `invoke evaluate` result (gaps, streaming detector...)."""

    def render_scores(self, recipe, result: dict) -> list[str]:
        """Markdown lines of an `invoke evaluate` report's figures."""
        sets = result["sets"]
        names = list(sets)
        lines = ["| set | samples | FP32 top-1 | INT8 top-1 | INT8 = FP32 |", "|---|---:|---:|---:|---:|"]
        for n in names:
            s = sets[n]
            lines.append(f"| {n} | {s['count']} | {percent(s['fp32']['accuracy'], 1)} | {percent(s['int8']['accuracy'], 1)} | "
                         f"{percent(s['int8_fp32_agreement'], 1)} |")
        lines += ["", "INT8 accuracy per class:", "",
                  "| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label in recipe.labels:
            lines.append(f"| {label} | " + " | ".join(percent(sets[n]["int8"]["per_class"][label], 1) for n in names) + " |")
        return lines

    def confusion_matrices(self, recipe, scored: dict) -> list[tuple[str, np.ndarray, list[str]]]:
        """(title, matrix, tick labels) for the confusion PNG: one matrix over the classes."""
        return [("", np.array(scored["int8"]["confusion"]), list(recipe.labels))]

    # ------------------------------------------------------------------ build extras and assets

    def extra_stages(self, recipe, profile: str, paths, technique: str, data_dir: Path | None, log) -> list:
        """Stages the kind adds after evaluate for the shipped model (e.g. tuning a detector)."""
        return []

    def asset_inputs(self, recipe, paths, technique: str) -> list[Path]:
        """Files the assets stage reads beyond the generic ones (outputs of `extra_stages`)."""
        return []

    def asset_suffixes(self, recipe) -> tuple[str, ...]:
        """Extra files the kind writes beside a model's assets (`<model><suffix>`)."""
        return ()

    def asset_extras(self, recipe, *, int8: Path, features: Path | None, paths, technique: str,
                     outputs: list) -> tuple[dict, dict[str, str]]:
        """(template context additions, {suffix: text} of extra files) for the model's assets."""
        return {}, {}
