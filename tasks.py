"""Invoke tasks: parse arguments, call the library. `invoke --list` shows them."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent


def _fail_cleanly(fn, *args, **kwargs):
    from npubuild.errors import BuildError

    try:
        return fn(*args, **kwargs)
    except BuildError as e:
        raise Exit(f"error: {e}", code=1) from None
    except KeyboardInterrupt:
        # Stages write through temporary files and stamp last: nothing half-written is kept.
        raise Exit("interrupted: finished stages are kept; run the same command again to continue",
                   code=130) from None


def _trained_on(folder, voice_bank: bool):
    """The --data-dir of the build whose model a task reads (None: the built-in data)."""
    from npubuild.kinds.base import WithBuiltinData

    if folder is None:
        if voice_bank:
            raise Exit("error: --voice-bank: give --trained-on too (the folder the model was trained on)", code=1)
        return None
    return WithBuiltinData(folder) if voice_bank else Path(folder)


def _count(option: str, value) -> int | None:
    """A count option (--jobs, --models-at-once): a whole number of at least 1, or a one-line error."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise Exit(f"error: --{option}: {value!r} is not a whole number of at least 1", code=1)
    return number


@task(help={
    "model": "a model name (models/<name>.toml), several separated by commas, or all (default: kws,quality)",
    "target": "a target name from targets/, or all (default: config build.target)",
    "profile": "smoke (tiny, for tests), fast (kws on half the renderings, 12 epochs) or default (default: config "
               "build.profile)",
    "data-dir": "real data instead of the built-in dataset (Speech Commands v2 layout for kws)",
    "dataset": "a named public dataset instead (speech-commands): downloaded, verified and extracted once",
    "cache-dir": "where --dataset keeps downloads (default: $NPUBUILD_CACHE or ~/.cache/npubuild)",
    "build-dir": "where intermediate artifacts go (default: build/)",
    "assets-dir": "where firmware assets go (default: firmware_assets/)",
    "dry-run": "say which stages would run and why; run nothing",
    "jobs": "Vela compilations run at once (default: one per CPU)",
    "models-at-once": "models built side by side, a process each (default: one per CPU; 1: one after another)",
    "replace-assets": "replace firmware assets that another profile or dataset made (otherwise the build stops)",
    "base-images": "image models: a folder of your own clean photos, degraded into the training data in place "
                   "of the built-in bases",
    "voice-bank": "with --data-dir (kws): train on your recordings and the built-in voice bank together, "
                  "[mix] real_share of each epoch from the recordings (default: the recipe's [mix] voice_bank)",
})
def build(c, model=None, target=None, profile=None, data_dir=None, build_dir=None, assets_dir=None,
          dry_run=False, jobs=None, replace_assets=False, dataset=None, cache_dir=None, base_images=None,
          models_at_once=None, voice_bank=False):
    """Train, quantize, compile and package the models; write memory reports."""
    from npubuild.datasets import data_dir_for
    from npubuild.kinds.base import BaseImagesDir
    from npubuild.pipeline import build as run_build

    cfg = c.config.build
    if base_images and (data_dir or dataset):
        raise Exit("error: --base-images: give it alone, not with --data-dir or --dataset", code=1)
    data_dir = _fail_cleanly(data_dir_for, dataset, Path(data_dir) if data_dir else None,
                             Path(cache_dir) if cache_dir else None, fetch_missing=not dry_run)
    if base_images:
        data_dir = BaseImagesDir(base_images)
    _fail_cleanly(
        run_build, ROOT, model=model or cfg.model, target=target or cfg.target, profile=profile or cfg.profile,
        data_dir=data_dir,
        build_dir=Path(build_dir) if build_dir else None, assets_dir=Path(assets_dir) if assets_dir else None,
        dry_run=dry_run, jobs=_count("jobs", jobs), replace_assets=replace_assets,
        models_at_once=_count("models-at-once", models_at_once), voice_bank=True if voice_bank else None,
    )


@task(help={
    "dataset": "a named public dataset: speech-commands (Speech Commands v0.02, 2.3 GB, CC BY 4.0)",
    "cache-dir": "where downloads go (default: $NPUBUILD_CACHE or ~/.cache/npubuild)",
})
def data(c, dataset, cache_dir=None):
    """Download (resuming), verify and extract a public dataset into the cache; what build --dataset reads."""
    from npubuild.datasets import data_dir_for

    _fail_cleanly(data_dir_for, dataset, None, Path(cache_dir) if cache_dir else None)


@task(help={
    "target": "a target name, several separated by commas, or all (default: every target with a report)",
    "check": "exit non-zero when a budget is exceeded, naming the model, the memory and the bytes over",
    "assets-dir": "where firmware assets are (default: firmware_assets/)",
    "open": "print the path of the HTML report (index.html) and open it in a browser, where there is one",
})
def report(c, target="all", check=False, assets_dir=None, open=False):
    """Re-read the memory reports against the targets as they are now; print every target x model.
    Also rewrites the HTML report, firmware_assets/index.html, from the JSON files there."""
    from npubuild.errors import BuildError, OverBudget
    from npubuild.fit import check_fits
    from npubuild.html_report import open_page, write_page
    from npubuild.pipeline import check_reports

    page = _fail_cleanly(write_page, Path(assets_dir) if assets_dir else ROOT / "firmware_assets")
    if open:
        open_page(page)
    folder = Path(assets_dir) if assets_dir else None
    problems = []
    for check_one in (lambda: check_fits(ROOT, assets_dir=folder),  # fitted choices (firmware_assets/fit/)
                      lambda: check_reports(ROOT, target=target, assets_dir=folder)):
        try:
            check_one()
        except OverBudget as e:
            problems.append(str(e))
        except BuildError as e:
            raise Exit(f"error: {e}", code=1) from None
    if problems and check:
        raise Exit(f"error: {'; '.join(problems)}", code=1)
    for problem in problems:
        print(f"warning: {problem}")


@task(help={
    "model": "the model whose recipes to compare: a name from models/ (kws, quality, digits, your own)",
    "targets": "comma-separated target names, or all (default: config build.target)",
    "profile": "smoke, fast or default",
    "techniques": "comma-separated recipes (default: all eight: ptq,qat,prune,pqat,cluster,cqat,prune_cluster,pcqat)",
    "data-dir": "real data instead of the built-in dataset",
    "ray": "run the recipes' stages on this Ray cluster (default: $RAY_ADDRESS; none: in this process)",
})
def compare(c, model="kws", targets=None, profile=None, techniques=None, data_dir=None, ray=None):
    """Build every optimization recipe and write firmware_assets/compare/<model>.{json,md}."""
    from npubuild.chains import compare_on_ray
    from npubuild.pipeline import compare as run_compare

    _fail_cleanly(
        run_compare, ROOT, model=model, targets=targets or c.config.build.target, profile=profile or c.config.build.profile,
        techniques=techniques.split(",") if techniques else None, data_dir=Path(data_dir) if data_dir else None,
        run_models=compare_on_ray(ray),
    )


@task(help={
    "model": "the model to fit (a name from models/)",
    "target": "the target whose budget it must fit (default: config build.target)",
    "max-drop": "accuracy bound: at most this many points below the best candidate's validation accuracy "
                "(default 1.0)",
    "min-accuracy": "accuracy bound instead: at least this validation accuracy (a fraction, e.g. 0.92)",
    "objective": "what the choice minimizes among candidates that fit: flash, sram or latency (default flash)",
    "with": "other models (comma-separated) that share the target: their figures files, built when missing",
    "profile": "smoke, fast or default (default: config build.profile)",
    "techniques": "comma-separated recipes to search (default: all eight)",
    "sparsities": "target sparsities tried beside the recipe's (default 0.5,0.75)",
    "clusters": "numbers of clusters tried beside the recipe's (default 4,8)",
    "apply": "write the choice into models/<model>.toml (ship and the changed settings; the rest kept)",
    "ray": "run the candidates on this Ray cluster (default: $RAY_ADDRESS; none: in this process)",
})
def fit(c, model, target=None, max_drop=None, min_accuracy=None, objective="flash", with_=None, profile=None,
        techniques=None, sparsities=None, clusters=None, apply=False, ray=None):
    """Search the deployment tree for the best model that fits a target; write firmware_assets/fit/."""
    from npubuild.candidates import CLUSTERS, SPARSITIES
    from npubuild.errors import OverBudget
    from npubuild.fit import Bound
    from npubuild.fit import fit as run_fit

    bound = Bound(max_drop=float(max_drop) if max_drop is not None else 1.0,
                  min_accuracy=float(min_accuracy) if min_accuracy is not None else None)
    try:
        _fail_cleanly(
            run_fit, ROOT, model=model, target=target or c.config.build.target, bound=bound, objective=objective,
            with_models=with_.split(",") if with_ else [], profile=profile or c.config.build.profile,
            techniques=techniques.split(",") if techniques else None,
            sparsities=tuple(float(v) for v in sparsities.split(",")) if sparsities else SPARSITIES,
            clusters=tuple(int(v) for v in clusters.split(",")) if clusters else CLUSTERS, apply=apply, ray=ray)
    except OverBudget as e:
        raise Exit(f"error: {e}", code=1) from None


@task(help={
    "tflite": "a full-INT8 or 16x8 TFLite file (or one Vela already compiled)",
    "target": "a target name, several separated by commas, or all (default: config build.target)",
    "name": "the model's name in the assets (default: the file's name)",
    "assets-dir": "where firmware assets go (default: firmware_assets/)",
})
def deploy(c, tflite, target=None, name=None, assets_dir=None):
    """Bring your own model: Vela, firmware assets and a memory report for any full-INT8 (or 16x8) TFLite file."""
    from npubuild.deploy import deploy as run_deploy

    _fail_cleanly(run_deploy, ROOT, tflite=Path(tflite), target=target or c.config.build.target, name=name,
                  assets_dir=Path(assets_dir) if assets_dir else None)


@task(help={"k": "only tests matching this pytest -k expression", "fast": "skip the slow end-to-end tests"})
def test(c, k=None, fast=False):
    """Run the test suite (real TensorFlow, Vela, LiteRT and C compiler on the smoke profile)."""
    args = [sys.executable, "-m", "pytest", "-q", "-ra", "tests"]
    if k:
        args += ["-k", k]
    if fast:
        args += ["-m", "not slow"]
    c.run(" ".join(f"'{a}'" for a in args), pty=False)


@task(help={
    "profile": "profile to time (default: default)",
    "model": "the models whose clean build is timed: names from models/ with commas, or all (default: config "
             "build.model, as invoke build); with --part fit: the models whose training step is timed (default: "
             "config build.model)",
    "output": "results file (default: benchmarks/results.json); every part merges its figures into it",
    "part": "build (a clean build, the no-op rebuild, the training step against a plain model.fit on the "
            "build's own data, Vela for every target, C arrays; default), fit (the training step alone, on an "
            "existing build), detector (the detector stage's tuning on an existing build's kws model) or "
            "finetune (every optimization scheme's fine-tuning speed, tfmot's own CQAT/PCQAT beside ours) or real "
            "(the shipped kws model on real recordings: clip accuracy, and the detector on streams of them)",
    "data-dir": "with --part real: a folder of real recordings in the Speech Commands layout",
    "noise-seconds": "with --part real: seconds of the folder's background noise for the false-alarm rate "
                     "(default 3600)",
    "trained-on": "with --part real: the model a build trained on this --data-dir folder (default: built-in data)",
    "voice-bank": "with --trained-on: the build that mixed that folder with the voice bank",
    "build-dir": "with --part fit or detector: the build folder that holds the model (default: build/)",
    "keep": "with --part build: build the scratch project in this new (or empty) folder and keep it",
})
def bench(c, profile="default", model=None, output="benchmarks/results.json", part="build", build_dir=None,
          keep=None, data_dir=None, noise_seconds=3600, trained_on=None, voice_bank=False):
    """Time a clean build stage by stage and in total, the no-op rebuild, the training step, Vela, C arrays."""
    from npubuild.bench import detector_benchmark, finetune_benchmark, run_benchmarks, training_step_benchmark

    if part == "detector":
        _fail_cleanly(detector_benchmark, ROOT, profile=profile, output=ROOT / output,
                      build_dir=Path(build_dir) if build_dir else None)
        return
    if part == "fit":
        for name in (model or c.config.build.model).split(","):
            _fail_cleanly(training_step_benchmark, ROOT, model=name, profile=profile, output=ROOT / output,
                          build_dir=Path(build_dir) if build_dir else None)
        return
    if part == "finetune":
        _fail_cleanly(finetune_benchmark, ROOT, output=ROOT / output)
        return
    if part == "real":
        if not data_dir:
            raise Exit("error: --part real needs --data-dir (real recordings in the Speech Commands layout)", code=1)
        from npubuild.bench import real_speech_benchmark

        _fail_cleanly(real_speech_benchmark, ROOT, profile=profile, data_dir=Path(data_dir), output=ROOT / output,
                      build_dir=Path(build_dir) if build_dir else None, noise_seconds=float(noise_seconds),
                      trained_on=_trained_on(trained_on, voice_bank))
        return
    if part != "build":
        raise Exit(f"error: --part {part!r}: expected build, fit, detector, finetune or real", code=1)
    _fail_cleanly(run_benchmarks, ROOT, profile=profile, output=ROOT / output, target=c.config.build.target,
                  model=model or c.config.build.model, keep=Path(keep).resolve() if keep else None)


@task(auto_shortflags=False, help={
    "wav": "the recording (WAV; stereo is averaged, other sample rates are resampled to 16 kHz)",
    "model": "a keyword-spotting model (default: kws)",
    "profile": "whose build to use: build/<profile>/<model>/builtin/<shipped recipe>/ (default: config build.profile)",
    "target": "say how long one inference takes on this target (Vela's estimate; default: config build.target)",
    "stride-ms": "run the model every N ms (default: the recipe's [detector])",
    "average-windows": "average the posteriors of the last N windows (default: the recipe's)",
    "threshold": "report a keyword when its averaged posterior reaches X (default: the recipe's)",
    "refractory-ms": "after a detection, report nothing for N ms (default: the recipe's)",
    "plot": "also write a PNG timeline of the averaged scores here",
})
def listen(c, wav, model="kws", profile=None, target=None, stride_ms=None, average_windows=None, threshold=None,
           refractory_ms=None, plot=None):
    """Detect keywords in a recording with the shipped INT8 model, streaming, as firmware does."""
    from npubuild.kinds.kws.listen import listen as run_listen

    result = _fail_cleanly(
        run_listen, ROOT, Path(wav), model=model, profile=profile or c.config.build.profile,
        target=target or c.config.build.target, stride_ms=stride_ms, average_windows=average_windows,
        threshold=threshold, refractory_ms=refractory_ms, plot=Path(plot) if plot else None,
    )
    print("\n".join(result.lines()))


@task(help={
    "model": "a model name from models/ (kws, quality, digits, your own)",
    "data-dir": "a labelled folder in the model kind's layout: Speech Commands (kws), images with labels.csv "
                "(quality), an .npz or one folder per label (keras); "
                "without it, the built-in test sets",
    "profile": "whose build to evaluate: build/<profile>/<model>/builtin/ (default: config build.profile)",
    "target": "also report the model's inference time and memory on this target (from its memory report)",
    "assets-dir": "where firmware assets go (default: firmware_assets/): writes evaluate/<model>-<dataset>.*",
    "build-dir": "the build folder holding the model (default: build/)",
    "trained-on": "evaluate the model a build trained on this --data-dir folder (default: the built-in data)",
    "voice-bank": "with --trained-on: the build that mixed that folder with the voice bank (--voice-bank)",
})
def evaluate(c, model="kws", data_dir=None, profile=None, target=None, assets_dir=None, build_dir=None,
             trained_on=None, voice_bank=False):
    """The shipped model, FP32 and INT8, on a labelled folder or the built-in test sets."""
    from npubuild.evaluation_report import evaluate_dataset

    _fail_cleanly(evaluate_dataset, ROOT, model=model, data_dir=Path(data_dir) if data_dir else None,
                  profile=profile or c.config.build.profile, target=target,
                  assets_dir=Path(assets_dir) if assets_dir else None,
                  build_dir=Path(build_dir) if build_dir else None,
                  trained_on=_trained_on(trained_on, voice_bank))


@task(help={"all": "also remove the generated firmware assets (firmware_assets/README.md is kept)",
            "build-dir": "the build folder to remove (default: build/)",
            "assets-dir": "with --all, the assets folder to empty (default: firmware_assets/)"})
def clean(c, all=False, build_dir=None, assets_dir=None):
    """Remove the build folder (and with --all, the generated firmware assets)."""
    from npubuild.pipeline import clean as run_clean

    _fail_cleanly(run_clean, ROOT, build_dir=Path(build_dir) if build_dir else None,
                  assets_dir=Path(assets_dir) if assets_dir else None, assets=all)


ns = Collection(build, data, report, compare, fit, deploy, evaluate, listen, test, bench, clean)
ns.configure({"build": {"model": "kws,quality", "target": "corstone-300-u55-128", "profile": "default"}})
