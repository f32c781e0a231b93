"""The candidates of `invoke fit` and `invoke compare --ray`: recipes crossed with their settings, where
each candidate's artifacts go, and the stages that build and score it.

Candidates are the eight recipes crossed with their settings (target sparsity for chains that
prune, number of clusters for chains that cluster, and what the model's kind offers through
`ModelKind.search_space`, e.g. a width multiplier). Each candidate is measured as the build
measures: its stages are the build's own (train, optimization steps, convert, evaluate, verify,
Vela per target), plus a small validate stage scoring the INT8 file on the validation split.

Where the artifacts go: a candidate whose settings are the recipe's own uses the normal build's
paths (a fit after a build or compare reuses them). Other settings get their own folders,
`<build>/<profile>/<model>/<dataset>/fit/<hash>/`, keyed by a short hash of the settings that
matter up to that point of the chain: the prune step of a pruning at sparsity 0.75 is shared by
every candidate that prunes at 0.75, whatever it does next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from npubuild.errors import BuildError
from npubuild.optimization_recipes import RECIPES
from npubuild.pipeline import ModelPaths

SPARSITIES = (0.5, 0.75)


CLUSTERS = (4, 8)


STEP_SETTINGS = {"optimize.target_sparsity": "prune", "optimize.clusters": "cluster"}



@dataclass(frozen=True)
class Candidate:
    """One point of the search: a recipe and the settings it is built with (only those its chain
    uses; `changed`: those that differ from the recipe file)."""

    technique: str
    settings: tuple[tuple[str, Any], ...] = ()
    changed: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return " ".join([self.technique, *(f"{k.split('.')[-1]}={v}" for k, v in self.changed)])

    def to_spec(self) -> dict:
        return {"technique": self.technique, "settings": [list(s) for s in self.settings],
                "changed": [list(s) for s in self.changed]}

    @classmethod
    def from_spec(cls, spec: dict) -> Candidate:
        return cls(spec["technique"], tuple(tuple(s) for s in spec["settings"]),
                   tuple(tuple(s) for s in spec["changed"]))


def current_value(recipe, name: str) -> Any:
    table, key = name.split(".", 1)
    return getattr(getattr(recipe, table), key)


def relevant(name: str, steps: tuple[str, ...]) -> bool:
    """Does setting `name` shape what `steps` (a chain, or () for the FP32 model) make? Step settings
    matter from their step on; other settings (the kind's) shape the FP32 model itself."""
    step = STEP_SETTINGS.get(name)
    return step in steps if step else not name.startswith("optimize.")


def search_space(recipe, technique: str, sparsities=SPARSITIES, clusters=CLUSTERS) -> dict[str, tuple]:
    from npubuild.kinds import get_kind

    steps = RECIPES[technique]
    space: dict[str, tuple] = {}
    if "prune" in steps:
        space["optimize.target_sparsity"] = tuple(sorted({recipe.optimize.target_sparsity, *sparsities}))
    if "cluster" in steps:
        space["optimize.clusters"] = tuple(sorted({recipe.optimize.clusters, *clusters}))
    space.update(get_kind(recipe.kind).search_space(recipe, technique))
    return space


def candidates(recipe, techniques: list[str] | None = None, sparsities=SPARSITIES, clusters=CLUSTERS) -> list[Candidate]:
    """Every recipe crossed with its settings, the recipe file's own settings first."""
    import itertools

    found = []
    for technique in techniques or list(RECIPES):
        if technique not in RECIPES:
            raise BuildError(f"unknown technique {technique!r} (known: {', '.join(RECIPES)})")
        space = search_space(recipe, technique, sparsities, clusters)
        names = sorted(space)
        combos = sorted(itertools.product(*(space[n] for n in names)),
                        key=lambda c: [v != current_value(recipe, n) for n, v in zip(names, c, strict=True)])
        for combo in combos:
            settings = tuple(zip(names, combo, strict=True))
            changed = tuple((n, v) for n, v in settings if v != current_value(recipe, n))
            found.append(Candidate(technique, settings, changed))
    return found


def with_settings(recipe, settings) -> Any:
    """`recipe` with "<table>.<field>" settings replaced (each table is a frozen dataclass)."""
    tables: dict[str, dict] = {}
    for name, value in settings:
        table, key = name.split(".", 1)
        tables.setdefault(table, {})[key] = value
    return replace(recipe, **{t: replace(getattr(recipe, t), **v) for t, v in tables.items()})


def settings_key(changed) -> str:
    from npubuild.stages import canonical_json

    return hashlib.sha256(canonical_json(dict(changed)).encode()).hexdigest()[:10] if changed else ""


@dataclass(frozen=True)
class CandidatePaths(ModelPaths):
    """The build's paths, moved under fit/<hash>/ wherever a changed setting shapes the file."""

    changed: tuple = ()

    def _under(self, steps: tuple[str, ...]) -> Path:
        key = settings_key(tuple((n, v) for n, v in self.changed if relevant(n, steps)))
        return self.base / "fit" / key if key else self.base

    def keras(self, steps: tuple[str, ...]) -> Path:
        return ModelPaths(self._under(steps), self.model).keras(steps)

    def recipe_dir(self, recipe: str) -> Path:
        return self._under(RECIPES[recipe]) / recipe


def candidate_paths(base: Path, model: str, candidate: Candidate) -> CandidatePaths:
    return CandidatePaths(base, model, candidate.changed)


def validation_file(paths, technique: str) -> Path:
    return paths.recipe_dir(technique) / "validation.json"


def validate_stage(recipe, paths, technique: str):
    """The INT8 model scored on the validation split (what `fit` chooses by), with the kind's metric."""
    from npubuild.pipeline import LITERT, TF_TOOLS, _kind_module
    from npubuild.stages import Stage
    from npubuild.validation_score import score_validation

    steps = RECIPES[technique]
    keras_files = paths.keras_files(technique)
    out = validation_file(paths, technique)
    return Stage(name=f"validate {recipe.name} {technique}", version=1,
                 inputs=(*keras_files, paths.int8(technique), paths.evaluation(technique), paths.features),
                 params={"split": "val"}, outputs=(out,), tools=TF_TOOLS + LITERT,
                 action=lambda: score_validation(recipe, steps, keras_files, paths.int8(technique), paths.features,
                                                 paths.evaluation(technique), out),
                 code=("validation_score", "optimize", *_kind_module(recipe)))


def candidate_stages(recipe, profile: str, data_dir: Path | None, base: Path, candidate: Candidate, targets,
                     validate: bool = True, log: Callable[[str], None] = print) -> list:
    """Every stage of one candidate, in order: the build's own stages (each built from the recipe with
    only the settings its output depends on, so shared files get one key), validate, Vela per target."""
    from npubuild import pipeline
    from npubuild.optimize import plan_recipe

    paths = candidate_paths(base, recipe.name, candidate)
    full = with_settings(recipe, candidate.settings)

    def upto(steps):
        return with_settings(recipe, [(n, v) for n, v in candidate.changed if relevant(n, steps)])

    stages = [pipeline.data_stage(recipe, profile, data_dir, paths, log), pipeline.train_stage(upto(()), profile, paths)]
    stages += [pipeline.step_stage(upto(plan.chain), profile, paths, plan) for plan in plan_recipe(candidate.technique)]
    stages += pipeline.recipe_stages(full, paths, candidate.technique)
    if validate:
        stages.append(validate_stage(full, paths, candidate.technique))
    stages += [pipeline.compile_stage(full, tgt, paths, candidate.technique) for tgt in targets]
    return stages
