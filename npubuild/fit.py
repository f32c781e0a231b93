"""`invoke fit`: search the deployment tree for the best model that fits a target's budget.

Candidates are the eight recipes crossed with their settings (target sparsity for chains that
prune, number of clusters for chains that cluster, and what the model's kind offers through
`ModelKind.search_space`, e.g. a width multiplier). Each candidate is measured as the build
measures: its stages are the build's own (train, optimization steps, convert, evaluate, verify,
Vela per target), plus a small validate stage scoring the INT8 file on the validation split. The
choice uses validation accuracy only; test accuracy is reported beside it.

Where the artifacts go: a candidate whose settings are the recipe's own uses the normal build's
paths (a fit after a build or compare reuses them). Other settings get their own folders,
`<build>/<profile>/<model>/<dataset>/fit/<hash>/`, keyed by a short hash of the settings that
matter up to that point of the chain: the prune step of a pruning at sparsity 0.75 is shared by
every candidate that prunes at 0.75, whatever it does next.

The choice (`choose`) is pure: among candidates that fit the budget together with the other
models (`--with`) and are within the accuracy bound (a drop in points from the best validation
accuracy, or an absolute minimum), the lowest by the objective (flash, SRAM or latency), ties to
the higher validation accuracy, then to the earlier candidate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from npubuild.errors import BuildError, OverBudget
from npubuild.pipeline import ModelPaths
from npubuild.techniques import RECIPES

OBJECTIVES = {"flash": "flash_bytes", "sram": "sram_bytes", "latency": "inference_ms"}
# Settings of the optimization steps tried beside the recipe's own values.
SPARSITIES = (0.5, 0.75)
CLUSTERS = (4, 8)
STEP_SETTINGS = {"optimize.target_sparsity": "prune", "optimize.clusters": "cluster"}


# --------------------------------------------------------------------------- candidates


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
    from npubuild.validate import score_validation

    steps = RECIPES[technique]
    keras_files = paths.keras_files(technique)
    out = validation_file(paths, technique)
    return Stage(name=f"validate {recipe.name} {technique}", version=1,
                 inputs=(*keras_files, paths.int8(technique), paths.evaluation(technique), paths.features),
                 params={"split": "val"}, outputs=(out,), tools=TF_TOOLS + LITERT,
                 action=lambda: score_validation(recipe, steps, keras_files, paths.int8(technique), paths.features,
                                                 paths.evaluation(technique), out),
                 code=("validate", "optimize", *_kind_module(recipe)))


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


# --------------------------------------------------------------------------- choice (pure)


@dataclass
class Bound:
    """The accuracy bound: at most `max_drop` points below the best candidate's validation accuracy,
    or (when given) at least `min_accuracy`."""

    max_drop: float = 1.0
    min_accuracy: float | None = None

    def floor(self, best: float) -> float:
        return self.min_accuracy if self.min_accuracy is not None else best - self.max_drop / 100.0

    def describe(self) -> dict:
        return {"min_accuracy": self.min_accuracy} if self.min_accuracy is not None else {"max_drop_points":
                                                                                          self.max_drop}


@dataclass
class Choice:
    chosen: dict | None
    floor: float
    best_val_accuracy: float
    message: str
    closest: dict | None = None
    records: list[dict] = field(default_factory=list)


def pareto_front(records: list[dict], cost: str) -> list[str]:
    """Ids of the records no other record beats: at least as accurate (validation) and at most as
    costly, better in one of the two."""
    front = []
    for r in records:
        if not any(o["val_accuracy"] >= r["val_accuracy"] and o[cost] <= r[cost]
                   and (o["val_accuracy"] > r["val_accuracy"] or o[cost] < r[cost]) for o in records):
            front.append(r["id"])
    return front


def choose(records: list[dict], bound: Bound, objective: str) -> Choice:
    """Mark each record (fits_budget, why_not, within_accuracy, fits) and pick the best. A record
    carries id, val_accuracy, sram_bytes, flash_bytes, inference_ms, fits_budget and budget_problems
    ({memory: bytes over})."""
    if objective not in OBJECTIVES:
        raise BuildError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    if not records:
        raise BuildError("no candidates to choose from")
    cost = OBJECTIVES[objective]
    best = max(r["val_accuracy"] for r in records)
    floor = round(bound.floor(best), 6)
    for r in records:
        r["within_accuracy"] = r["val_accuracy"] >= floor - 1e-9
        why = [f"{memory} over budget by {over} bytes" for memory, over in sorted(r["budget_problems"].items())]
        if not r["within_accuracy"]:
            why.append(f"validation accuracy {r['val_accuracy']:.4f} below {floor:.4f} by "
                       f"{100 * (floor - r['val_accuracy']):.2f} points")
        r["why_not"] = why
        r["fits"] = not why
    for name in ("flash_bytes", "inference_ms"):
        front = set(pareto_front(records, name))
        for r in records:
            r.setdefault("pareto", {})[name] = r["id"] in front
    eligible = [r for r in records if r["fits"]]
    if eligible:
        chosen = min(eligible, key=lambda r: (r[cost], -r["val_accuracy"], records.index(r)))
        message = (f"chose {chosen['id']}: {objective} {_cost_text(chosen, cost)}, validation accuracy "
                   f"{chosen['val_accuracy']:.4f} (floor {floor:.4f}), fits {len(eligible)} of {len(records)}")
        return Choice(chosen, floor, best, message, records=records)
    closest = min(records, key=lambda r: (_shortfall(r, floor), records.index(r)))
    message = f"nothing fits: closest is {closest['id']}: {'; '.join(closest['why_not'])}"
    return Choice(None, floor, best, message, closest=closest, records=records)


def _cost_text(r: dict, cost: str) -> str:
    return f"{r[cost]:.3f} ms" if cost == "inference_ms" else f"{r[cost]:,} bytes"


def _shortfall(r: dict, floor: float) -> float:
    """How far a record is from fitting, as a fraction: bytes over each budget as a share of that
    budget, plus accuracy points missing as a share of the floor."""
    over = sum(bytes_over / max(1, r["budgets"][memory]) for memory, bytes_over in r["budget_problems"].items())
    return over + max(0.0, floor - r["val_accuracy"]) / max(floor, 1e-9)


# --------------------------------------------------------------------------- measuring


def compact_memory(fig) -> dict:
    """What the memory report needs of a model's figures (memory_use), as plain numbers."""
    return {k: getattr(fig, k) for k in ("arena_bytes", "fast_scratch_bytes", "io_bytes", "flash_bytes",
                                         "sram_bytes", "dram_bytes", "code_flash_bytes", "app_sram_bytes")}


def figures_of(name: str, memory: dict):
    """ModelFigures from `compact_memory` numbers (the rest zero): enough for `report.build_report`."""
    from npubuild.report import ModelFigures

    return ModelFigures(name=name, technique="", vela_sram_bytes=0, vela_flash_bytes=0, npu_ops=0, cpu_ops=0,
                        cpu_op_names=[], cycles=0, inference_ms=0.0, macs=0, tflite_bytes=0,
                        accuracy={"fp32": 0.0, "int8": 0.0}, **memory)


def budget_check(target, model_memory: dict, model: str, others: dict[str, dict]) -> dict:
    """The memory report of the candidate with the other models: ({memory: bytes over}, totals)."""
    from npubuild.report import build_report

    rep = build_report(target, [figures_of(model, model_memory), *(figures_of(n, m) for n, m in others.items())])
    over = {k: -v["headroom_bytes"] for k, v in rep["total"].items()
            if isinstance(v, dict) and v.get("headroom_bytes", 0) < 0}
    return {"budget_problems": over, "fits_budget": not over,
            "total_sram_bytes": rep["total"]["sram_bytes"], "total_flash_bytes": rep["total"]["flash_bytes"],
            "budgets": {k: v["budget_bytes"] for k, v in rep["total"].items() if isinstance(v, dict)}}


def measure(recipe, target, base: Path, candidate: Candidate, provenance: dict, others: dict[str, dict],
            app: dict) -> dict:
    from npubuild.pipeline import model_figures

    paths = candidate_paths(base, recipe.name, candidate)
    full = with_settings(recipe, candidate.settings)
    fig = replace(model_figures(full, target, paths, candidate.technique, provenance), **app)
    memory = compact_memory(fig)
    val = json.loads(validation_file(paths, candidate.technique).read_text())
    return {"id": candidate.id, "recipe": candidate.technique, "settings": dict(candidate.settings),
            "changed": dict(candidate.changed),
            "artifacts": paths.recipe_dir(candidate.technique).relative_to(base).as_posix(),
            "val_accuracy": val["accuracy"], "test_accuracy": fig.accuracy["int8"],
            "sram_bytes": fig.sram_bytes, "flash_bytes": fig.flash_bytes, "cycles": fig.cycles,
            "inference_ms": fig.inference_ms, "memory": memory, **budget_check(target, memory, recipe.name, others)}


# --------------------------------------------------------------------------- running


def ray_address(given: str | None) -> str | None:
    """--ray ADDRESS, else $RAY_ADDRESS; None: run locally."""
    import os

    return given or os.environ.get("RAY_ADDRESS") or None


def other_models(root: Path, layout, names: list[str], target, profile: str, log) -> dict[str, dict]:
    """The --with models' memory figures on `target`: from their figures files, built when missing."""
    from npubuild.pipeline import build, figures_file
    from npubuild.report import figures_from_file

    found = {}
    for name in names:
        path = figures_file(layout.assets_dir, target.name, name)
        if not path.is_file():
            log(f"[fit] {name}: no figures for {target.name}; building it")
            build(root, model=name, target=target.name, profile=profile, build_dir=layout.build_dir,
                  assets_dir=layout.assets_dir, log=log)
        found[name] = compact_memory(figures_from_file(path))
    return found


def fit(root: Path, *, model: str, target: str, bound: Bound | None = None, objective: str = "flash",
        with_models: list[str] | None = None, profile: str = "default", techniques: list[str] | None = None,
        sparsities=SPARSITIES, clusters=CLUSTERS, apply: bool = False, ray: str | None = None,
        build_dir: Path | None = None, assets_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every candidate, choose, write fit/<model>-<target>.{json,md,png}; raise OverBudget
    (after writing) when nothing fits."""
    from npubuild import pipeline, stages
    from npubuild.config import resolve_models, resolve_targets
    from npubuild.stages import BuildLock

    if objective not in OBJECTIVES:
        raise BuildError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    bound = bound or Bound()
    layout = pipeline.Layout.for_project(root, build_dir, assets_dir)
    recipe = resolve_models(layout.root, model)[0]
    recipe.profile(profile)
    targets = resolve_targets(layout.root, target)
    if len(targets) != 1:
        raise BuildError(f"fit takes one target (got {target!r}): run it once per target")
    tgt = targets[0]
    others = other_models(root, layout, [m for m in (with_models or []) if m != recipe.name], tgt, profile, log)
    found = candidates(recipe, techniques, sparsities, clusters)
    base = layout.build_dir / profile / recipe.name / pipeline.dataset_id(None)
    with BuildLock(layout.build_dir):
        cache = stages.Cache(layout.root, log)
        specs = [c.to_spec() for c in found]
        run_candidates(cache, layout, recipe.name, profile, specs, [tgt.name], validate=True, ray=ray)
    provenance = {"profile": profile, "dataset": pipeline.dataset_label(None)}
    app = _app_sizes(layout.assets_dir, tgt.name, recipe.name)
    records = [measure(recipe, tgt, base, c, provenance, others, app) for c in found]
    choice = choose(records, bound, objective)
    result = {"model": recipe.name, "profile": profile, "objective": objective, "bound": bound.describe(),
              "target": {"name": tgt.name, "accelerator": tgt.accelerator, "sram_budget_bytes": tgt.sram_budget_bytes,
                         "flash_budget_bytes": tgt.flash_budget_bytes},
              "with": {n: m for n, m in sorted(others.items())},
              "best_val_accuracy": choice.best_val_accuracy, "accuracy_floor": choice.floor,
              "chosen": choice.chosen["id"] if choice.chosen else None,
              "closest": choice.closest["id"] if choice.closest else None,
              "message": choice.message, "candidates": records,
              "ran": sum(r.ran for r in cache.results)}
    paths = write_fit(layout.assets_dir, result)
    cache_summary = f"{result['ran']} of {len(cache.results)} stages ran"
    log(render_table(result))
    log(f"[fit] {cache_summary}; wrote {paths[0].parent}")
    result["results"] = cache.results
    if choice.chosen is None:
        raise OverBudget(f"{recipe.name} on {tgt.name}: {choice.message}")
    if apply:
        edit_recipe(recipe.source, choice.chosen["recipe"], choice.chosen["changed"])
        log(f"[fit] {recipe.source.name}: ship = {choice.chosen['recipe']!r}"
            + "".join(f", {k} = {v}" for k, v in choice.chosen["changed"].items()))
    return result


def _app_sizes(assets_dir: Path, target: str, model: str) -> dict:
    """The application C beside the model counts in its budget: taken from the model's figures file
    on the target when a build wrote one (it does not depend on the recipe), else zero."""
    from npubuild.pipeline import figures_file

    path = figures_file(assets_dir, target, model)
    try:
        made = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: made.get(k, 0) for k in ("code_flash_bytes", "app_sram_bytes")}


def fit_files(assets_dir: Path, model: str, target: str) -> tuple[Path, Path, Path]:
    stem = assets_dir / "fit" / f"{model}-{target}"
    return stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")


def write_fit(assets_dir: Path, result: dict) -> tuple[Path, Path, Path]:
    from npubuild.stages import write_json, write_text

    json_path, md_path, png_path = fit_files(assets_dir, result["model"], result["target"]["name"])
    write_json(json_path, {k: v for k, v in result.items() if k not in ("ran", "results")})
    write_text(md_path, render_markdown(result, png_path.name))
    render_chart(result, png_path)
    return json_path, md_path, png_path


def render_table(result: dict) -> str:
    lines = [f"{'candidate':<44} {'val acc':>8} {'test acc':>8} {'SRAM KiB':>9} {'flash KiB':>9} {'ms':>7}  fits"]
    for r in result["candidates"]:
        lines.append(f"{r['id']:<44} {r['val_accuracy']:>8.4f} {r['test_accuracy']:>8.4f} "
                     f"{r['sram_bytes'] / 1024:>9.1f} {r['flash_bytes'] / 1024:>9.1f} {r['inference_ms']:>7.3f}  "
                     f"{'yes' if r['fits'] else 'no: ' + '; '.join(r['why_not'])}")
    return "\n".join([*lines, result["message"]])


def render_markdown(result: dict, chart: str) -> str:
    t = result["target"]
    bound = result["bound"]
    bound_text = (f"at least {bound['min_accuracy']:.4f}" if "min_accuracy" in bound
                  else f"at most {bound['max_drop_points']} points below the best ({result['best_val_accuracy']:.4f})")
    lines = [f"# Fit: {result['model']} on {t['name']}", "",
             f"Budget: SRAM {t['sram_budget_bytes']:,} B, flash {t['flash_budget_bytes']:,} B"
             + (f", shared with {', '.join(result['with'])}" if result["with"] else "") + ". "
             f"Objective: {result['objective']}. Validation accuracy {bound_text}: floor "
             f"{result['accuracy_floor']:.4f}. Profile {result['profile']}.", "",
             f"**{result['message']}**", "", f"![Pareto chart]({chart})", "",
             "| candidate | val acc | test acc | SRAM KiB | flash KiB | cycles | ms | Pareto (flash / ms) | fits |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["candidates"]:
        mark = " (chosen)" if r["id"] == result["chosen"] else ""
        lines.append(f"| {r['id']}{mark} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['sram_bytes'] / 1024:.1f} | {r['flash_bytes'] / 1024:.1f} | {r['cycles']:,} | "
                     f"{r['inference_ms']:.3f} | {'yes' if r['pareto']['flash_bytes'] else '-'} / "
                     f"{'yes' if r['pareto']['inference_ms'] else '-'} | "
                     f"{'yes' if r['fits'] else '; '.join(r['why_not'])} |")
    lines += ["", "Choice by validation accuracy (the test split is reported, never used to choose). SRAM and "
              "flash: the model's own figures as the memory report counts them; fits: with the other models "
              "named, against the target's budgets.", ""]
    return "\n".join(lines)


def render_chart(result: dict, path: Path) -> None:
    """Validation accuracy against flash and against latency; the Pareto front joined, candidates that
    do not fit hollow, the choice starred. Deterministic PNG (no software tag, no date)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npubuild.stages import atomic_path

    records = result["candidates"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, (cost, label, scale) in zip(axes, (("flash_bytes", "flash KiB", 1 / 1024),
                                               ("inference_ms", "inference ms", 1.0)), strict=True):
        for r in records:
            x, y = r[cost] * scale, 100 * r["val_accuracy"]
            ax.scatter([x], [y], s=30, facecolors="tab:blue" if r["fits"] else "none", edgecolors="tab:blue")
        front = sorted((r for r in records if r["pareto"][cost]), key=lambda r: r[cost])
        ax.plot([r[cost] * scale for r in front], [100 * r["val_accuracy"] for r in front], color="tab:orange",
                linewidth=1, label="Pareto front")
        chosen = next((r for r in records if r["id"] == result["chosen"]), None)
        if chosen:
            ax.scatter([chosen[cost] * scale], [100 * chosen["val_accuracy"]], marker="*", s=200, color="tab:red",
                       label=f"chosen: {chosen['id']}", zorder=3)
        ax.axhline(100 * result["accuracy_floor"], color="0.5", linestyle="--", linewidth=1, label="accuracy floor")
        if cost == "flash_bytes":
            ax.axvline(result["target"]["flash_budget_bytes"] * scale, color="black", linewidth=1,
                       label="flash budget")
            ax.set_xlim(0, max(max(r[cost] for r in records), 1) * scale * 1.1)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy %")
        ax.legend(fontsize=7, loc="lower right")
    verdict = f"chose {result['chosen']}" if result["chosen"] else f"nothing fits (closest: {result['closest']})"
    fig.suptitle(f"{result['model']} on {result['target']['name']} ({result['objective']}): {verdict}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------- stages on workers


def stages_for(root: Path, build_dir: Path, model: str, profile: str, specs: list[dict], targets: list[str],
               validate: bool, log: Callable[[str], None] = print) -> list[list]:
    """Every candidate's stage list, rebuilt from plain data (what a Ray worker receives)."""
    from npubuild import pipeline
    from npubuild.config import resolve_models, resolve_targets

    recipe = resolve_models(root, model)[0]
    tgts = [resolve_targets(root, t)[0] for t in targets]
    base = build_dir / profile / recipe.name / pipeline.dataset_id(None)
    return [candidate_stages(recipe, profile, None, base, Candidate.from_spec(s), tgts, validate, log) for s in specs]


def run_candidates(cache, layout, model: str, profile: str, specs: list[dict], targets: list[str],
                   validate: bool, ray: str | None) -> None:
    """Run every candidate's stages: in this process, chain after chain, or on a Ray cluster."""
    from npubuild.chains import plan_chains, run_chains_on_ray, run_in_order

    per_candidate = stages_for(layout.root, layout.build_dir, model, profile, specs, targets, validate, cache.log)
    chains = plan_chains(per_candidate)
    address = ray_address(ray)
    if address is None:
        by_stamp = {s.stamp: s for stages in per_candidate for s in stages}
        for chain in chains:
            run_in_order(cache, [by_stamp[stamp] for stamp in chain.stamps])
        return
    job = {"root": str(layout.root), "build_dir": str(layout.build_dir), "model": model, "profile": profile,
           "specs": specs, "targets": targets, "validate": validate}
    run_chains_on_ray(address, cache, chains, job, run_chain_job)


def compare_on_ray(ray: str | None):
    """For `pipeline.compare(run_models=...)`: each recipe's stages (the build's own) as chains on the Ray
    cluster at `ray` / $RAY_ADDRESS; None when there is none (compare then runs them itself)."""
    from npubuild.pipeline import ModelPaths, dataset_id

    if ray_address(ray) is None:
        return None

    def run_models(cache, layout, recipe, profile, techniques, targets):
        run_candidates(cache, layout, recipe.name, profile, [Candidate(t).to_spec() for t in techniques],
                       [t.name for t in targets], validate=False, ray=ray)
        return ModelPaths(layout.build_dir / profile / recipe.name / dataset_id(None), recipe.name)

    return run_models


def run_chain_job(job: dict, stamps: list[str]) -> tuple[list[tuple], list[str]]:
    """What a worker does: rebuild the stages, run those of its chain in order through a Cache."""
    from npubuild.chains import run_in_order
    from npubuild.stages import Cache

    lines: list[str] = []
    root = Path(job["root"])
    per_candidate = stages_for(root, Path(job["build_dir"]), job["model"], job["profile"], job["specs"],
                               job["targets"], job["validate"], lines.append)
    by_stamp = {str(s.stamp): s for stages in per_candidate for s in stages}
    cache = Cache(root, lines.append)
    run_in_order(cache, [by_stamp[stamp] for stamp in stamps])
    return [(r.name, r.ran, r.reason, r.seconds) for r in cache.results], lines


# --------------------------------------------------------------------------- --apply and report --check


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def edit_toml(text: str, table: str, key: str, value: Any) -> str:
    """Set `key = value` in `[table]` ("" for the top level) by editing its line (comments, order and
    the rest of the file kept); a missing key is added at the end of its table."""
    lines = text.splitlines(keepends=True)
    current, start, end = "", 0 if not table else None, None
    for i, line in enumerate(lines):
        header = re.match(r"\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            if current == table and start is not None and end is None:
                end = i
            current = header.group(1).strip()
            if current == table:
                start = i + 1
            continue
        if current == table and start is not None:
            m = re.match(rf"(\s*{re.escape(key)}\s*=\s*)(\"[^\"]*\"|[^#\s]+)(.*)$", line, re.DOTALL)
            if m:
                lines[i] = m.group(1) + _toml_value(value) + m.group(3)
                return "".join(lines)
    if start is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{key} = {_toml_value(value)}\n"
    end = len(lines) if end is None else end
    while end > start and not lines[end - 1].strip():
        end -= 1
    lines.insert(end, f"{key} = {_toml_value(value)}\n")
    return "".join(lines)


def edit_recipe(path: Path, technique: str, changed: dict) -> None:
    from npubuild.stages import write_text

    text = edit_toml(path.read_text(), "", "ship", technique)
    for name, value in sorted(changed.items()):
        table, key = name.split(".", 1)
        text = edit_toml(text, table, key, value)
    write_text(path, text)


def check_fits(root: Path, assets_dir: Path | None = None, log: Callable[[str], None] = print) -> list[str]:
    """`invoke report --check`: each fit's chosen candidate, with the models it was fitted with, still
    fits its target as the target file says now. Returns the lines printed; raises OverBudget."""
    from npubuild.config import resolve_targets
    from npubuild.pipeline import Layout

    layout = Layout.for_project(root, None, assets_dir)
    lines, problems = [], []
    for path in sorted((layout.assets_dir / "fit").glob("*.json")):
        try:
            result = json.loads(path.read_text())
            chosen = next(r for r in result["candidates"] if r["id"] == result["chosen"]) if result["chosen"] else None
        except (ValueError, KeyError, StopIteration) as e:
            raise BuildError(f"{path}: not a fit result ({e})") from None
        if chosen is None:
            problems.append(f"{path.name}: no candidate fitted ({result.get('message', '')})")
            continue
        tgt = resolve_targets(layout.root, result["target"]["name"])[0]
        check = budget_check(tgt, chosen["memory"], result["model"], result["with"])
        over = "; ".join(f"{k} over budget by {v} bytes" for k, v in sorted(check["budget_problems"].items()))
        lines.append(f"fit {result['model']} on {tgt.name}: {chosen['id']} "
                     f"{'still fits' if check['fits_budget'] else 'NO LONGER FITS: ' + over}")
        if not check["fits_budget"]:
            problems.append(f"{path.name}: chosen {chosen['id']} no longer fits {tgt.name}: {over}")
    for line in lines:
        log(line)
    if problems:
        raise OverBudget("; ".join(problems))
    return lines
