"""Leave one engine out: the nearest measure of unseen real speakers that can be computed offline.

`invoke evaluate --model kws` (built-in data) trains the FP32 model again, as the train stage does,
on the training clips of every engine but one (LEFT_OUT: every Flite voice), and scores it on the
test clips of that engine (Flite `slt`, a voice no model heard) and of the others. The same clips
scored by the shipped model, which heard other Flite voices, tell what hearing the engine is worth;
the left-out model's own gap between the engines it heard and the one it did not is the figure
to watch: real people are an engine no model here heard.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.kinds.kws.engines import ENGINES, FLITE

LEFT_OUT = FLITE


def left_out_dir(paths, engine: str) -> Path:
    return paths.features.parent / f"without-{engine}"


def scores_json(paths, engine: str = LEFT_OUT) -> Path:
    return left_out_dir(paths, engine) / "scores.json"


def engine_rows(features: Path, split: str, engine: str, keep: bool) -> np.ndarray:
    """Rows of `split` spoken by `engine` (keep=True) or by the other engines (silence included)."""
    with np.load(features) as d:
        engines = d[f"e_{split}"]
    hit = engines == ENGINES.index(engine)
    return np.flatnonzero(hit if keep else ~hit)


def train_without(recipe: Recipe, profile, features: Path, engine: str, out_dir: Path) -> None:
    """Train without `engine`'s clips; score FP32 top-1 on the test clips of `engine` and of the others."""
    from npubuild.kinds.kws.data import load_split
    from npubuild.stages import write_json
    from npubuild.tfenv import array_batches
    from npubuild.train import load_keras_model, train_fp32

    model_path, log_path = out_dir / "model.h5", out_dir / "train_log.json"
    rows = engine_rows(features, "train", engine, keep=False)
    train_fp32(recipe, profile, features, model_path, log_path, rows=rows)
    model = load_keras_model(model_path)
    x, y = load_split(features, "test")
    scores = {}
    for name, pick in ((engine, engine_rows(features, "test", engine, keep=True)),
                       ("others", engine_rows(features, "test", engine, keep=False))):
        predicted = model.predict(array_batches(x[pick], 256), verbose=0).argmax(axis=1)
        scores[name] = {"count": int(len(pick)), "fp32_accuracy": round(float(np.mean(predicted == y[pick])), 6)}
    write_json(out_dir / "scores.json", {"left_out": engine, "train_clips": int(len(rows)), "test": scores})


def held_out_engine_stage(recipe: Recipe, profile: str, paths, log: Callable[[str], None] = print,
                     engine: str = LEFT_OUT):
    from npubuild.stages import Stage

    prof = recipe.profile(profile)
    out_dir = left_out_dir(paths, engine)
    return Stage(
        name=f"without {engine} {recipe.name}", version=1, inputs=(paths.features,),
        params={"left_out": engine, "architecture": recipe.architecture, "labels": recipe.labels,
                "seed": recipe.seed, "epochs": prof.epochs, "batch_size": prof.batch_size,
                "learning_rate": prof.learning_rate},
        outputs=(scores_json(paths, engine), out_dir / "model.h5"), tools=("tensorflow", "tf-keras"),
        action=lambda: train_without(recipe, prof, paths.features, engine, out_dir),
        code=("kinds.kws.held_out_engine",),
    )
