"""The build driver: lays out the stages for each model and target, and runs them through the cache.

Reads like a script: data -> train -> convert -> evaluate, then per target
compile -> assets, then per target report. Nothing here imports TensorFlow;
the stage actions do, when they run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from npubuild.config import Recipe, Target, resolve_models, resolve_targets
from npubuild.errors import BuildError, OverBudget
from npubuild.kinds import get_kind
from npubuild.optimization_recipes import RECIPES, chain_name
from npubuild.stages import BuildLock, Cache, Stage, StageResult

TF_TOOLS = ("tensorflow", "tf-keras", "tensorflow-model-optimization")
LITERT = ("ai-edge-litert",)
VELA = ("ethos-u-vela",)


@dataclass(frozen=True)
class Layout:
    """Where things go: the project (recipes, targets), intermediates, deliverables."""

    root: Path
    build_dir: Path
    assets_dir: Path

    @classmethod
    def for_project(cls, root: Path, build_dir: Path | None = None, assets_dir: Path | None = None) -> Layout:
        root = root.resolve()
        return cls(root, (build_dir or root / "build").resolve(), (assets_dir or root / "firmware_assets").resolve())


@dataclass(frozen=True)
class ModelPaths:
    """Intermediate artifacts of one model, one profile, one dataset.

    base/data/features.npz, base/fp32/model.h5, base/steps/<chain>/model.h5 (one
    per optimization chain, shared by the recipes that start with it), and
    base/<recipe>/ for what follows from each recipe (INT8 file, evaluation,
    weight check, Vela output per target).
    """

    base: Path
    model: str

    @property
    def features(self) -> Path:
        return self.base / "data" / "features.npz"

    def keras(self, steps: tuple[str, ...]) -> Path:
        return self.base / ("fp32" if not steps else f"steps/{chain_name(steps)}") / "model.h5"

    def keras_log(self, steps: tuple[str, ...]) -> Path:
        return self.keras(steps).with_name("train.json")

    def keras_files(self, recipe: str) -> tuple[Path, ...]:
        """The Keras files `optimize.load_chain_model` rebuilds `recipe`'s final model from: its
        chain's model, and after a QAT step also the model before it (QAT keeps weights only)."""
        steps = RECIPES[recipe]
        if steps and steps[-1] == "qat":
            return self.keras(steps), self.keras(steps[:-1])
        return (self.keras(steps),)

    def recipe_dir(self, recipe: str) -> Path:
        return self.base / recipe

    def int8(self, recipe: str) -> Path:
        return self.recipe_dir(recipe) / f"{self.model}_int8.tflite"

    def evaluation(self, recipe: str) -> Path:
        return self.recipe_dir(recipe) / "evaluation.json"

    def weights(self, recipe: str) -> Path:
        return self.recipe_dir(recipe) / "weights.json"

    def vela_dir(self, recipe: str, target: str) -> Path:
        return self.recipe_dir(recipe) / "vela" / target


@dataclass
class BuildSummary:
    results: list[StageResult] = field(default_factory=list)
    reports: dict[str, dict] = field(default_factory=dict)  # target name -> memory report
    seconds: float = 0.0
    models_at_once: int = 1  # models whose stages ran side by side (a process each)


def dataset_id(data_dir: Path | None) -> str:
    from npubuild.kinds.base import BaseImagesDir, WithBuiltinData

    if data_dir is None:
        return "builtin"
    prefix = ("bases-" if isinstance(data_dir, BaseImagesDir) else
              "mix-" if isinstance(data_dir, WithBuiltinData) else "dir-")
    return prefix + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def dataset_label(data_dir: Path | None) -> str:
    """How headers and reports name the data a model was trained on (no absolute path)."""
    from npubuild.kinds.base import WithBuiltinData

    if data_dir is None:
        return "builtin"
    also = " and the built-in data" if isinstance(data_dir, WithBuiltinData) else ""
    return f"{data_dir.resolve().name}{also} ({dataset_id(data_dir)})"


def shipped_paths(root: Path, recipe: Recipe, profile: str, build_dir: Path | None = None,
                  need: tuple[str, ...] = ("int8", "features"), trained_on: Path | None = None) -> ModelPaths:
    """The build's paths of `recipe`'s shipped model for `profile`, trained on the built-in data or on
    `trained_on` (a `--data-dir` folder, a `WithBuiltinData` one for a mix), checked to hold what `need`s
    (ModelPaths properties/methods: int8, evaluation, features)."""
    recipe.profile(profile)
    layout = Layout.for_project(root, build_dir)
    paths = ModelPaths(layout.build_dir / profile / recipe.name / dataset_id(trained_on), recipe.name)
    for what in need:
        path = paths.features if what == "features" else getattr(paths, what)(recipe.ship)
        if not path.is_file():
            how = f" --data-dir {trained_on}" if trained_on is not None else ""
            from npubuild.kinds.base import WithBuiltinData

            how += " --voice-bank" if isinstance(trained_on, WithBuiltinData) else ""
            raise BuildError(f"{path}: not found; run invoke build first (--model {recipe.name} --profile {profile}"
                             f"{how})")
    return paths


def data_stage(recipe: Recipe, profile: str, data_dir: Path | None, paths: ModelPaths,
               log: Callable[[str], None] = print) -> Stage:
    """The data stage of `recipe` for `data_dir`; with a `WithBuiltinData` folder it reads the built-in
    data stage's file (`data_stages` runs that one first)."""
    from npubuild.kinds.base import WithBuiltinData

    kind = get_kind(recipe.kind)
    extra = {}
    if isinstance(data_dir, WithBuiltinData):
        if not kind.mixes_builtin_data:
            raise BuildError(f"{recipe.source}: {recipe.name} ({kind.name}) has no built-in data to mix with "
                             f"{data_dir}")
        extra["builtin"] = builtin_paths(paths, recipe).features
    plan = kind.data_plan(recipe, recipe.profile(profile), data_dir, paths.features, log, **extra)
    return Stage(name=f"data {recipe.name}", version=3, inputs=plan.inputs, params=plan.params,
                 outputs=(paths.features,), tools=plan.tools, action=plan.action,
                 code=(*plan.code, *_kind_module(recipe)))


def builtin_paths(paths: ModelPaths, recipe: Recipe) -> ModelPaths:
    """The paths of the same model and profile on the built-in data (beside `paths`)."""
    return ModelPaths(paths.base.parent / dataset_id(None), recipe.name)


def data_stages(recipe: Recipe, profile: str, data_dir: Path | None, paths: ModelPaths,
                log: Callable[[str], None] = print) -> list[Stage]:
    """The data stages to run in order: the built-in data's first when `data_dir` mixes it in."""
    from npubuild.kinds.base import WithBuiltinData

    first = ([data_stage(recipe, profile, None, builtin_paths(paths, recipe), log)]
             if isinstance(data_dir, WithBuiltinData) else [])
    return [*first, data_stage(recipe, profile, data_dir, paths, log)]


def train_stage(recipe: Recipe, profile: str, paths: ModelPaths) -> Stage:
    from npubuild import train

    prof = recipe.profile(profile)
    return Stage(
        name=f"train {recipe.name}", version=2, inputs=(paths.features,),
        params={"architecture": recipe.architecture, "labels": recipe.labels, "seed": recipe.seed,
                "epochs": prof.epochs, "batch_size": prof.batch_size, "learning_rate": prof.learning_rate,
                "batchnorm_samples": prof.batchnorm_samples,
                **({"image": vars(recipe.image)} if recipe.image else {}),
                **get_kind(recipe.kind).model_params(recipe)},
        outputs=(paths.keras(()), paths.keras_log(())), tools=TF_TOOLS,
        action=lambda: train.train_fp32(recipe, prof, paths.features, paths.keras(()), paths.keras_log(())),
        code=("train", *_kind_module(recipe)),
    )


def step_stage(recipe: Recipe, profile: str, paths: ModelPaths, plan) -> Stage:
    from npubuild import optimize

    prof = recipe.profile(profile)
    epochs = prof.step_epochs(plan.step)
    return Stage(
        name=f"{plan.scheme} {recipe.name}", version=2, inputs=(paths.keras(plan.before), paths.features),
        params={"chain": plan.chain, "scheme": plan.scheme, "settings": vars(recipe.optimize), "epochs": epochs,
                "finetune_samples": prof.finetune_samples, "batch_size": prof.batch_size, "seed": recipe.seed,
                "batchnorm_samples": prof.batchnorm_samples},
        outputs=(paths.keras(plan.chain), paths.keras_log(plan.chain)), tools=TF_TOOLS,
        action=lambda: optimize.run_step(recipe, prof, plan, paths.keras(plan.before), paths.features,
                                         paths.keras(plan.chain), paths.keras_log(plan.chain)),
        code=("optimize", *_kind_module(recipe)),
    )


def recipe_stages(recipe: Recipe, paths: ModelPaths, technique: str) -> list[Stage]:
    """convert -> evaluate -> verify for one recipe, after its chain was trained."""
    from npubuild import convert, optimize

    steps = RECIPES[technique]
    qat = bool(steps) and steps[-1] == "qat"
    keras_files = paths.keras_files(technique)

    def keras_model():
        return optimize.load_chain_model(steps, *keras_files)

    label = f"{recipe.name} {technique}"
    return [
        Stage(
            name=f"convert {label}", version=2, inputs=(*keras_files, paths.features),
            params={"quantization_aware": qat, "representative_samples": convert.REPRESENTATIVE_SAMPLES,
                    "seed": recipe.seed},
            outputs=(paths.int8(technique),), tools=TF_TOOLS,
            action=lambda: convert.convert_to_int8(recipe, keras_model(), paths.features, paths.int8(technique),
                                                   recipe.seed, quantization_aware=qat),
            code=("convert", "optimize", *_kind_module(recipe)),
        ),
        Stage(
            name=f"evaluate {label}", version=2, inputs=(*keras_files, paths.int8(technique), paths.features),
            params={"labels": recipe.labels}, outputs=(paths.evaluation(technique),), tools=TF_TOOLS + LITERT,
            action=lambda: get_kind(recipe.kind).evaluate(recipe, keras_model(), paths.int8(technique),
                                                          paths.features, paths.evaluation(technique)),
            code=("classifier_accuracy", "optimize", *_kind_module(recipe)),
        ),
        Stage(
            name=f"verify {label}", version=3, inputs=(paths.int8(technique),),
            params={"steps": steps, "expect": optimize.expectations(recipe, technique)},
            outputs=(paths.weights(technique),), tools=LITERT,
            action=lambda: optimize.verify_recipe(recipe, technique, paths.int8(technique),
                                                  paths.weights(technique)),
            code=("optimize",),
        ),
    ]


def model_stages(recipe: Recipe, profile: str, paths: ModelPaths, techniques: list[str]) -> list[Stage]:
    """Every stage from features to verified INT8 files for `techniques`, each shared chain once."""
    from npubuild.optimize import plan_recipe

    stages, seen = [train_stage(recipe, profile, paths)], set()
    for technique in techniques:
        for plan in plan_recipe(technique):
            if plan.chain not in seen:
                seen.add(plan.chain)
                stages.append(step_stage(recipe, profile, paths, plan))
    for technique in techniques:
        stages += recipe_stages(recipe, paths, technique)
    return stages


def compile_stage(recipe: Recipe, target: Target, paths: ModelPaths, technique: str) -> Stage:
    from npubuild import vela

    out = vela.VelaOutputs(paths.vela_dir(technique, target.name), recipe.name)
    return Stage(
        name=f"compile {recipe.name} {technique} for {target.name}", version=2,
        inputs=(paths.int8(technique), *([target.vela_ini] if target.vela_config else [])),
        params={**target.vela_params(), "vela_config": target.vela_config or vela.ARM_CONFIG},
        outputs=out.all(), tools=VELA,
        action=lambda: vela.compile_with_vela(paths.int8(technique), target, out),
        code=("vela",),
    )


def _kind_module(recipe: Recipe) -> tuple[str, ...]:
    """The module of the recipe's kind (its code is part of the stages that call it)."""

    return (type(get_kind(recipe.kind)).__module__,)


def figures_file(assets_dir: Path, target: str, model: str) -> Path:
    """Everything the memory report says about one model on one target, beside its assets: the report
    of a target counts every model folder that has one (the whole firmware, not only this build's)."""
    return assets_dir / target / model / f"{model}_figures.json"


def assets_stage(recipe: Recipe, target: Target, target_file: Path, paths: ModelPaths, technique: str,
                 assets_dir: Path, provenance: dict[str, str]) -> Stage:
    from npubuild import app_code, assets, stages, vela

    out = vela.VelaOutputs(paths.vela_dir(technique, target.name), recipe.name)
    folder = assets_dir / target.name / recipe.name

    kind = get_kind(recipe.kind)

    def action() -> None:
        figures = vela.read_vela_figures(out)
        extras = kind.asset_extras(recipe, int8=paths.int8(technique), features=paths.features, paths=paths,
                                   technique=technique, outputs=assets.io_tensors(paths.int8(technique))[1])
        assets.write_model_assets(recipe=recipe, target=target, technique=technique, compiled=out.tflite,
                                  int8=paths.int8(technique), features=paths.features,
                                  scratch_bytes=figures["scratch_bytes"],
                                  fast_scratch_bytes=figures["fast_scratch_bytes"], out_dir=folder,
                                  extras=extras, provenance=provenance)
        model = model_figures(recipe, target, paths, technique, provenance, vela_figures=figures)
        # the application C beside the model (front end, detector, preprocessing) counts in its budget
        model = app_code.with_app_sizes(model, app_code.sizes_path(folder, recipe.name))
        stages.write_json(figures_file(assets_dir, target.name, recipe.name), asdict(model))

    return Stage(
        name=f"assets {recipe.name} for {target.name}", version=6,
        inputs=(out.tflite, out.summary, out.log, out.per_layer, paths.int8(technique), paths.features, target_file,
                paths.evaluation(technique), *kind.asset_inputs(recipe, paths, technique)),
        params={"technique": technique, "labels": recipe.labels, **provenance,
                "frontend": vars(recipe.frontend) if recipe.frontend else None},
        tools=LITERT + ("jinja2",),
        outputs=tuple(folder / f"{recipe.name}{suffix}"
                      for suffix in ("_model.h", "_model.c", "_meta.h", "_ops.h", "_golden.h", "_golden.c",
                                     *kind.asset_suffixes(recipe))) + (folder / "integration.md",
                                                                                 figures_file(assets_dir, target.name,
                                                                                              recipe.name)),
        action=action, code=("assets", "vela", "report", "app_code", *_kind_module(recipe)),
    )


def model_figures(recipe: Recipe, target: Target, paths: ModelPaths, technique: str, provenance: dict[str, str],
                  vela_figures: dict | None = None):
    """Everything the memory report says about one model on one target (`vela_figures`: Vela's figures
    when the caller has read them already)."""
    from npubuild import assets, vela
    from npubuild.report import ModelFigures

    out = vela.VelaOutputs(paths.vela_dir(technique, target.name), recipe.name)
    v = vela_figures or vela.read_vela_figures(out)
    evaluation = json.loads(paths.evaluation(technique).read_text())
    input_info, outputs = assets.io_tensors(paths.int8(technique))
    return ModelFigures(
        name=recipe.name, technique=technique, vela_sram_bytes=v["sram_bytes"],
        vela_flash_bytes=v["read_only_bytes"] + v["command_stream_bytes"],
        **assets.placement(target, v["scratch_bytes"], v["fast_scratch_bytes"], v["compiled_bytes"]),
        io_bytes=input_info.size + sum(o.size for o in outputs),
        npu_ops=v["npu_ops"], cpu_ops=v["cpu_ops"], cpu_op_names=v["cpu_op_names"], cycles=v["cycles"],
        inference_ms=v["inference_ms"], macs=v["macs"], tflite_bytes=paths.int8(technique).stat().st_size,
        accuracy={"fp32": evaluation["fp32"]["accuracy"], "int8": evaluation["int8"]["accuracy"]},
        top_cycles=v["top_cycles"], top_staging=v["top_staging"],
        per_class_int8=evaluation["int8"]["per_class"], confusion_int8=evaluation["int8"].get("confusion", []),
        labels=evaluation["labels"], per_head=evaluation["int8"].get("per_head", {}), **provenance,
    )


def report_stage(target: Target, target_file: Path, assets_dir: Path, models: list[str]) -> Stage:
    """The memory report of every model whose assets are in the target's folder (`models`: this
    build's and any others there), from their figures files."""
    from npubuild import report, stages

    folder = assets_dir / target.name
    json_path, md_path = folder / "memory_report.json", folder / "memory_report.md"
    chart_path = folder / "memory_chart.png"
    files = [figures_file(assets_dir, target.name, m) for m in sorted(models)]

    def action() -> None:
        figures = [report.figures_from_file(path) for path in files]
        rep = report.build_report(target, figures)
        stages.write_json(json_path, rep)
        report.render_chart(rep, chart_path)
        stages.write_text(md_path, report.render_markdown(rep, figures, chart_path.name))

    return Stage(name=f"report {target.name}", version=4, inputs=(target_file, *files),
                 params={"models": sorted(models)}, outputs=(json_path, md_path, chart_path),
                 tools=("matplotlib",), action=action, code=("report",))


def models_in_assets(assets_dir: Path, target: str) -> list[str]:
    """Models whose assets are in the target's folder (each with a figures file)."""
    folder = assets_dir / target
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and figures_file(assets_dir, target, p.name).is_file()) \
        if folder.is_dir() else []


def check_provenance(assets_dir: Path, targets: list[Target], recipes: list[Recipe], provenance: dict[str, str],
                     replace: bool) -> None:
    """A build whose profile or dataset differs from the one that made a model's assets does not replace
    them silently: it stops (one line) unless `replace` (--replace-assets) is given."""
    if replace:
        return
    for tgt in targets:
        for recipe in recipes:
            path = figures_file(assets_dir, tgt.name, recipe.name)
            try:
                made = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            old = {k: made.get(k, "") for k in provenance}
            if old != provenance:
                raise BuildError(f"{path.parent}: holds the {recipe.name} model built with profile {old['profile']!r} "
                                 f"from dataset {old['dataset']!r}; this build (profile {provenance['profile']!r}, "
                                 f"dataset {provenance['dataset']!r}) would replace it: pass --replace-assets, or "
                                 f"--assets-dir for a folder of its own")


def _start(root: Path, model: str, target: str, profile: str, data_dir: Path | None, build_dir: Path | None,
           assets_dir: Path | None, dry_run: bool, log: Callable[[str], None]):
    layout = Layout.for_project(root, build_dir, assets_dir)
    recipes = resolve_models(layout.root, model)
    targets = resolve_targets(layout.root, target)
    for recipe in recipes:
        recipe.profile(profile)  # fail early on an unknown profile
    if data_dir is not None and not data_dir.exists():
        raise BuildError(f"{data_dir}: data directory does not exist")
    from npubuild.kinds.base import BaseImagesDir

    if isinstance(data_dir, BaseImagesDir):
        for recipe in recipes:
            if not get_kind(recipe.kind).takes_base_images:
                raise BuildError(f"--base-images: model {recipe.name} ({get_kind(recipe.kind).name}) does not build "
                                 f"its data from base images; name an image model with --model")
    if not dry_run:
        _check_writable(layout.assets_dir)
    return layout, recipes, targets, Cache(layout.root, log, dry_run=dry_run)


def mixed_data_dir(recipes: list[Recipe], data_dir: Path | None, voice_bank: bool | None) -> Path | None:
    """`data_dir` as the build uses it: a `WithBuiltinData` folder when the built-in data is to be mixed in
    (`voice_bank` True, or None and every recipe's `[mix] voice_bank` says so), else as given."""
    from npubuild.kinds.base import BaseImagesDir, WithBuiltinData

    if data_dir is None or isinstance(data_dir, (BaseImagesDir, WithBuiltinData)):
        if voice_bank and data_dir is None:
            raise BuildError("--voice-bank: give --data-dir too (the recordings to mix with the voice bank)")
        return data_dir
    wanted = voice_bank if voice_bank is not None else bool(recipes) and all(r.mix.voice_bank for r in recipes)
    if not wanted:
        return data_dir
    for recipe in recipes:
        if not get_kind(recipe.kind).mixes_builtin_data:
            raise BuildError(f"--voice-bank: model {recipe.name} ({get_kind(recipe.kind).name}) has no built-in "
                             f"data to mix with {data_dir}; name a keyword model with --model")
    return WithBuiltinData(data_dir)


def _check_writable(folder: Path) -> None:
    """Fail before any work when an output folder cannot be written (not at the end of a long build)."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # probe where the folder would be created; create nothing yet
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BuildError(f"{folder}: output folder is not writable ({e.strerror})") from None


def _run_models(cache: Cache, layout: Layout, recipe: Recipe, profile: str, data_dir: Path | None,
                techniques: list[str], should_stop: Callable[[], bool] = lambda: False) -> ModelPaths:
    paths = ModelPaths(layout.build_dir / profile / recipe.name / dataset_id(data_dir), recipe.name)
    for stage in data_stages(recipe, profile, data_dir, paths, cache.log):
        cache.run(stage)
    stages = model_stages(recipe, profile, paths, techniques)
    for i, stage in enumerate(stages, start=1):  # a compare sweep says how far it is
        _check_stop(should_stop)
        cache.run(stage, position=f"stage {i}/{len(stages)} of {recipe.name}" if len(techniques) > 1 else "")
    return paths


def _check_stop(should_stop: Callable[[], bool]) -> None:
    if should_stop():  # another model of a side-by-side build failed: start no new stage
        from npubuild.workers import Stopped

        raise Stopped


def model_chain(layout: Layout, recipe: Recipe, profile: str, data_dir: Path | None, *,
                log: Callable[[str], None], should_stop: Callable[[], bool] = lambda: False,
                cache: Cache | None = None) -> tuple[ModelPaths, list[StageResult]]:
    """Every stage of one model up to its shipped INT8 file and its kind's extra stages (the part of a
    build that is the model's alone); returns its paths and the results of its stages. Without `cache`
    (a model built in a process of its own: `workers.run_side_by_side`) it makes one."""
    cache = cache or Cache(layout.root, log)
    first = len(cache.results)
    paths = _run_models(cache, layout, recipe, profile, data_dir, [recipe.ship], should_stop)
    for stage in get_kind(recipe.kind).extra_stages(recipe, profile, paths, recipe.ship, data_dir, log):
        _check_stop(should_stop)
        cache.run(stage)
    return paths, cache.results[first:]


def _models_to_build(layout: Layout, recipes: list[Recipe], profile: str, data_dir: Path | None) -> list[Recipe]:
    """The recipes with a stage out of date up to their shipped INT8 file and extra stages (a dry run:
    hashes what the real run hashes next, once in this process)."""
    probe = Cache(layout.root, lambda _: None, dry_run=True)
    return [recipe for recipe in recipes
            if any(r.reason.startswith("would run")
                   for r in model_chain(layout, recipe, profile, data_dir, log=probe.log, cache=probe)[1])]


def build(root: Path, *, model: str = "all", target: str, profile: str = "default", data_dir: Path | None = None,
          build_dir: Path | None = None, assets_dir: Path | None = None, dry_run: bool = False,
          jobs: int | None = None, replace_assets: bool = False, models_at_once: int | None = None,
          voice_bank: bool | None = None, log: Callable[[str], None] = print) -> BuildSummary:
    """Build every stage that is out of date for the models and targets asked for.

    With `dry_run`, say which stages would run and why, and run none. `jobs`: how many
    Vela compilations run at once (default: one per CPU). `models_at_once`: how many models'
    stage chains run side by side, each in a process of its own (default: one per CPU; 1: one
    after another in this process). One build at a time per build folder (a second one stops
    with a clear message). Assets another profile or dataset made are replaced only with
    `replace_assets`. `voice_bank`: train on `data_dir` and the built-in data together (None: as the
    recipes' `[mix]` say; `mixed_data_dir`).
    """
    with BuildLock(Layout.for_project(root, build_dir, assets_dir).build_dir, enabled=not dry_run):
        return _build(root, model=model, target=target, profile=profile, data_dir=data_dir, build_dir=build_dir,
                      assets_dir=assets_dir, dry_run=dry_run, jobs=jobs, replace_assets=replace_assets,
                      models_at_once=models_at_once, voice_bank=voice_bank, log=log)


def _build(root: Path, *, model: str, target: str, profile: str, data_dir: Path | None, build_dir: Path | None,
           assets_dir: Path | None, dry_run: bool, jobs: int | None, replace_assets: bool,
           models_at_once: int | None, log: Callable[[str], None], voice_bank: bool | None = None) -> BuildSummary:
    from npubuild.report import check_budget

    start = time.perf_counter()
    layout, recipes, targets, cache = _start(root, model, target, profile, data_dir, build_dir, assets_dir,
                                             dry_run, log)
    data_dir = mixed_data_dir(recipes, data_dir, voice_bank)
    provenance = {"profile": profile, "dataset": dataset_label(data_dir)}
    check_provenance(layout.assets_dir, targets, recipes, provenance, replace_assets)
    slots = 1 if dry_run else min(len(recipes), models_at_once or os.cpu_count() or 1)
    if slots > 1:  # a process per model pays off only for models with stages to run
        slots = max(1, min(slots, len(_models_to_build(layout, recipes, profile, data_dir))))
    summary = BuildSummary(models_at_once=slots)
    if slots < 2:
        chains = [model_chain(layout, recipe, profile, data_dir, log=log, cache=cache)[0] for recipe in recipes]
    else:  # side by side, a process per model (workers.py); its stage results join this build's
        from npubuild.workers import Job, run_side_by_side

        done = run_side_by_side([Job(r.name, model_chain, (layout, r, profile, data_dir)) for r in recipes],
                                log, slots)
        chains = [paths for paths, _ in done]
        cache.results.extend(result for _, results in done for result in results)
    entries = [(recipe, paths, recipe.ship) for recipe, paths in zip(recipes, chains, strict=True)]
    # Vela for every target and model at once (independent subprocesses), then assets and reports.
    cache.run_parallel([compile_stage(recipe, tgt, paths, technique)
                        for tgt in targets for recipe, paths, technique in entries], workers=jobs)
    for tgt in targets:
        target_file = layout.root / "targets" / f"{tgt.name}.toml"
        for recipe, paths, technique in entries:
            cache.run(assets_stage(recipe, tgt, target_file, paths, technique, layout.assets_dir, provenance))
        models = set(models_in_assets(layout.assets_dir, tgt.name)) | {r.name for r, _, _ in entries}
        cache.run(report_stage(tgt, target_file, layout.assets_dir, sorted(models)))
        if dry_run:
            continue
        summary.reports[tgt.name] = json.loads((layout.assets_dir / tgt.name / "memory_report.json").read_text())
    if not dry_run:
        write_assets_summary(layout.assets_dir)
    summary.results = cache.results
    summary.seconds = time.perf_counter() - start
    if not dry_run:  # firmware_assets/index.html, the page a person reads (html_report.py)
        from npubuild.html_report import write_after_build

        write_after_build(layout.assets_dir, summary, [{"model": r.name, "recipe": t, "profile": profile,
                                                        "dataset": dataset_id(data_dir), "evaluation": p.evaluation(t)}
                                                       for r, p, t in entries])
    log(render_summary(summary))
    for rep in summary.reports.values():
        check_budget(rep)
    return summary


def clean(root: Path, *, build_dir: Path | None = None, assets_dir: Path | None = None, assets: bool = False) -> None:
    """Remove the build folder (waiting for no build: it takes the build lock first) and, with `assets`,
    everything generated in the assets folder (its README is kept)."""
    import shutil

    layout = Layout.for_project(root, build_dir, assets_dir)
    if layout.build_dir.is_dir():
        with BuildLock(layout.build_dir):
            for child in layout.build_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.rmtree(layout.build_dir, ignore_errors=True)
    if assets and layout.assets_dir.is_dir():
        for child in layout.assets_dir.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _written_reports(assets_dir: Path) -> dict[str, dict]:
    reports = {}
    for path in sorted(assets_dir.glob("*/memory_report.json")):
        try:
            reports[path.parent.name] = json.loads(path.read_text())
        except ValueError as e:
            raise BuildError(f"{path}: not valid JSON: {e}") from None
    return reports


def write_assets_summary(assets_dir: Path) -> Path:
    """firmware_assets/summary.md: every target x model built so far."""
    from npubuild import report, stages

    path = assets_dir / "summary.md"
    stages.write_text(path, report.render_summary(_written_reports(assets_dir)))
    return path


def check_reports(root: Path, *, target: str = "all", assets_dir: Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, dict]:
    """Re-check written memory reports against the targets as they are now (budgets may have been
    edited); print the table; raise naming model, memory and bytes over when a budget is exceeded."""
    from npubuild import report

    layout = Layout.for_project(root, None, assets_dir)
    written = _written_reports(layout.assets_dir)
    names = list(written) if target == "all" else [t.name for t in resolve_targets(layout.root, target)]
    missing = [n for n in names if n not in written]
    if missing or not names:
        where = layout.assets_dir / (missing[0] if missing else "<target>") / "memory_report.json"
        raise BuildError(f"{where}: no memory report; run invoke build first")
    checked = {}
    for name in names:
        tgt = resolve_targets(layout.root, name)[0]
        checked[name] = report.build_report(tgt, report.figures_from_report(written[name]))
    log(report.render_summary(checked))
    problems = [p for rep in checked.values() for p in report.over_budget(rep)]
    if problems:
        raise OverBudget("; ".join(problems))
    return checked


def compare_stage(recipe: Recipe, paths: ModelPaths, techniques: list[str], targets: list[Target],
                  assets_dir: Path) -> Stage:
    from npubuild import compare, stages, vela

    folder = assets_dir / "compare"
    json_path, md_path = folder / f"{recipe.name}.json", folder / f"{recipe.name}.md"

    def action() -> None:
        records = []
        for technique in techniques:
            evaluation = json.loads(paths.evaluation(technique).read_text())
            weights = json.loads(paths.weights(technique).read_text())
            per_target = {}
            for tgt in targets:
                v = vela.read_vela_figures(vela.VelaOutputs(paths.vela_dir(technique, tgt.name), recipe.name))
                per_target[tgt.name] = {k: v[k] for k in ("sram_bytes", "flash_bytes", "cycles", "inference_ms",
                                                          "npu_ops", "cpu_ops")}
                per_target[tgt.name]["model_bytes"] = v["read_only_bytes"] + v["command_stream_bytes"]
            records.append({
                "recipe": technique, "steps": list(RECIPES[technique]),
                "accuracy": {"fp32": evaluation["fp32"]["accuracy"], "int8": evaluation["int8"]["accuracy"]},
                "tflite_bytes": paths.int8(technique).stat().st_size,
                "zipped_bytes": compare.zipped_size(paths.int8(technique)),
                "weights": {k: weights[k] for k in ("sparsity_prunable", "sparsity_all", "max_values_per_channel",
                                                    "max_values_per_tensor", "not_optimizable")},
                "targets": per_target,
            })
        result = {"model": recipe.name, "shipped": recipe.ship, **compare.compare_rows(records)}
        stages.write_json(json_path, result)
        stages.write_text(md_path, compare.render_markdown(recipe.name, result, recipe.ship,
                                                           get_kind(recipe.kind).metric_note))

    inputs = []
    for technique in techniques:
        inputs += [paths.int8(technique), paths.evaluation(technique), paths.weights(technique)]
        for tgt in targets:
            out = vela.VelaOutputs(paths.vela_dir(technique, tgt.name), recipe.name)
            inputs += [out.summary, out.log]
    return Stage(name=f"compare {recipe.name}", version=2, inputs=tuple(inputs),
                 params={"techniques": techniques, "targets": [t.name for t in targets], "shipped": recipe.ship},
                 outputs=(json_path, md_path), action=action, code=("pipeline",))


def compare(root: Path, *, model: str, targets: str, profile: str = "default", data_dir: Path | None = None,
            techniques: list[str] | None = None, build_dir: Path | None = None, assets_dir: Path | None = None,
            log: Callable[[str], None] = print, run_models: Callable | None = None) -> BuildSummary:
    """Build every recipe of the deployment tree for `model` and compare them on `targets`. `run_models`
    (cache, layout, recipe, profile, techniques, targets) -> ModelPaths runs the recipes' stages instead
    of this process (on a Ray cluster: `chains.compare_on_ray`)."""
    with BuildLock(Layout.for_project(root, build_dir, assets_dir).build_dir):
        return _compare(root, model=model, targets=targets, profile=profile, data_dir=data_dir,
                        techniques=techniques, build_dir=build_dir, assets_dir=assets_dir, log=log,
                        run_models=run_models)


def _compare(root: Path, *, model: str, targets: str, profile: str, data_dir: Path | None,
             techniques: list[str] | None, build_dir: Path | None, assets_dir: Path | None,
             log: Callable[[str], None], run_models: Callable | None = None) -> BuildSummary:
    start = time.perf_counter()
    layout, recipes, target_list, cache = _start(root, model, targets, profile, data_dir, build_dir, assets_dir,
                                                 False, log)
    data_dir = mixed_data_dir(recipes, data_dir, None)
    techniques = techniques or list(RECIPES)
    unknown = [t for t in techniques if t not in RECIPES]
    if unknown:
        raise BuildError(f"unknown technique {unknown[0]!r} (known: {', '.join(RECIPES)})")
    for recipe in recipes:
        if run_models is not None and data_dir is None:  # the same stages, run elsewhere (chains.compare_on_ray)
            paths = run_models(cache, layout, recipe, profile, techniques, target_list)
        else:
            paths = _run_models(cache, layout, recipe, profile, data_dir, techniques)
            cache.run_parallel([compile_stage(recipe, tgt, paths, technique)
                                for technique in techniques for tgt in target_list])
        cache.run(compare_stage(recipe, paths, techniques, target_list, layout.assets_dir))
    summary = BuildSummary(results=cache.results, seconds=time.perf_counter() - start)
    log(render_summary(summary))
    return summary


def render_summary(summary: BuildSummary) -> str:
    from npubuild.report_text import fraction

    lines = ["", "stage                                        ran    seconds  reason", "-" * 78]
    for r in summary.results:
        lines.append(f"{r.name:<44} {'yes' if r.ran else 'no':<6} {r.seconds:>7.1f}  {r.reason}")
    lines.append("")
    lines.append(f"{'target':<24} {'model':<8} {'SRAM KiB':>9} {'flash KiB':>10} {'ms':>7} {'INT8 acc':>9} fits")
    for name, rep in summary.reports.items():
        for m in rep["models"]:
            lines.append(f"{name:<24} {m['name']:<8} {m['sram_bytes'] / 1024:>9.1f} {m['flash_bytes'] / 1024:>10.1f} "
                         f"{m['inference_ms']:>7.3f} {fraction(m['accuracy']['int8']):>9} "
                         f"{'yes' if rep['total']['fits'] else 'NO'}")
    lines.append(f"\nbuild finished in {summary.seconds:.1f} s")
    return "\n".join(lines)
