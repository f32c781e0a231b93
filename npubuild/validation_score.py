"""The validate stage's action: a recipe's INT8 file scored on the validation split, with the kind's
metric (what `invoke fit` chooses by; the evaluate stage keeps scoring the test split)."""

from __future__ import annotations

import json
from pathlib import Path


def score_validation(recipe, steps: tuple[str, ...], keras_files: tuple[Path, ...], int8: Path, features: Path,
                     evaluation: Path, out: Path) -> None:
    from npubuild.kinds import get_kind
    from npubuild.optimize import load_chain_model
    from npubuild.stages import write_json

    kind = get_kind(recipe.kind)
    x, y = kind.load_split(recipe, features, "val")
    scored = kind.score(recipe, load_chain_model(steps, *keras_files), int8, x, y, json.loads(evaluation.read_text()))
    write_json(out, {"split": "val", "count": scored["count"], "accuracy": scored["int8"]["accuracy"],
                     "fp32_accuracy": scored["fp32"]["accuracy"]})
