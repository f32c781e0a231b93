"""`invoke fit`: search the deployment tree for the best model that fits a target's budget.

The candidates (`candidates.py`: recipes crossed with their settings, each built by the build's own
stages plus a validate stage) run here or on a Ray cluster (`chains.run_candidates`), are measured
as the build measures them, and one is chosen. The choice uses validation accuracy only; test
accuracy is reported beside it.

The choice (`choose`) is pure: among candidates that fit the budget together with the other
models (`--with`) and are within the accuracy bound (a drop in points from the best validation
accuracy, or an absolute minimum), the lowest by the objective (flash, SRAM or latency), ties to
the higher validation accuracy, then to the earlier candidate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from npubuild.candidates import (
    CLUSTERS,
    SPARSITIES,
    Candidate,
    candidate_paths,
    candidates,
    validation_file,
    with_settings,
)
from npubuild.errors import BuildError, OverBudget

OBJECTIVES = {"flash": "flash_bytes", "sram": "sram_bytes", "latency": "inference_ms"}


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
    from npubuild.chains import run_candidates
    from npubuild.config import edit_recipe, resolve_models, resolve_targets
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
    from npubuild.charts import pyplot, save_png

    plt = pyplot()

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
    save_png(fig, path)


# --------------------------------------------------------------------------- stages on workers


# --------------------------------------------------------------------------- --apply and report --check


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
