"""Benchmarks: wall time of each stage of a clean build, and of the no-op rebuild.

Results go to a JSON file in the repository, with the machine they ran on.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.stages import tool_versions, write_json


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "cpu_model": cpu_model(),
            "vector_units": vector_units(), "python": platform.python_version(),
            "tools": tool_versions(("tensorflow", "tf-keras", "tensorflow-model-optimization", "ethos-u-vela",
                                    "ai-edge-litert"))}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor: its name and, on x86, vendor, family, model and stepping from the first CPU of
    /proc/cpuinfo (a virtual machine may show only "AMD EPYC"; the family tells Zen 4 from Zen 5);
    elsewhere what `platform` says. Trained weights are byte-identical across x86 CPUs only where
    TensorFlow's oneDNN kernels match (docs/reproducibility.md)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if not line.strip():
                if fields:
                    break  # the first processor is enough
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = (fields.get("model name") or fields.get("Model") or fields.get("Processor") or platform.processor()
            or platform.machine())
    if "vendor_id" in fields and "cpu family" in fields:
        return (f"{name} ({fields['vendor_id']} family {fields['cpu family']} model {fields.get('model', '?')} "
                f"stepping {fields.get('stepping', '?')})")
    return name


def vector_units() -> list[str]:
    """The vector instruction sets numpy found on this CPU (its dispatch targets): which kernels ran."""
    try:
        features = np._core._multiarray_umath.__cpu_features__
    except AttributeError:
        return []
    wanted = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR", "ASIMD", "SVE")
    return [name for name in wanted if features.get(name)]


def _cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) clock ticks of every CPU since boot, from the first line of /proc/stat."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


class CpuUse:
    """How busy the machine's cores were while the block ran (every process, read from /proc/stat):
    the mean busy cores, the idle core-seconds, and the busy cores in each `bin_seconds` of the run.
    The idle core-seconds bound what a better overlap of the stages could still win; the bins show
    where they fell. Empty figures where /proc/stat is absent or unreadable."""

    def __init__(self, bin_seconds: float = 30.0, stat: Path = Path("/proc/stat")) -> None:
        self.bin_seconds, self.stat = bin_seconds, stat
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        ticks = _cpu_jiffies(self.stat)
        if ticks is not None:
            self.samples.append((time.perf_counter(), *ticks))

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> CpuUse:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def figures(self) -> dict:
        if len(self.samples) < 2:
            return {}
        cpus = os.cpu_count() or 1
        (t0, b0, n0), (t1, b1, n1) = self.samples[0], self.samples[-1]
        busy = cpus * (b1 - b0) / max(n1 - n0, 1)
        bins, edge, start = [], t0 + self.bin_seconds, self.samples[0]
        for sample in self.samples[1:]:
            if sample[0] >= edge or sample is self.samples[-1]:
                bins.append(round(cpus * (sample[1] - start[1]) / max(sample[2] - start[2], 1), 2))
                start, edge = sample, sample[0] + self.bin_seconds
        return {"cpus": cpus, "busy_cores_mean": round(busy, 2),
                "idle_core_seconds": round((cpus - busy) * (t1 - t0), 1),
                "bin_seconds": self.bin_seconds, "busy_cores_per_bin": bins}


def merge_results(output: Path, figures: dict, training_step: dict | None = None) -> None:
    """Write `figures` into the results file `output`, keeping what the other parts wrote there; the
    `training_step` figures join those of the other models (keyed by model)."""
    existing = json.loads(output.read_text()) if output.is_file() else {}
    merged = {**existing, **figures}
    if training_step:
        merged["training_step"] = {**existing.get("training_step", {}), **training_step}
    write_json(output, merged)


def run_benchmarks(root: Path, *, profile: str, output: Path, target: str, model: str = "all",
                   keep: Path | None = None) -> dict:
    """Build `model` (names with commas, or all) from scratch in a scratch project, then
    rebuild it with nothing changed; time the training step of each trained model against a plain
    `model.fit` on the build's own data; Vela for every target; C arrays. Merged into `output`: the keys
    written by the other parts (`--part fit`, `detector`, `finetune`) are kept. `keep`: a new or empty
    folder for the scratch project, kept afterwards (its build/ can then serve `invoke compare` or other
    profiles that share its stages)."""
    import contextlib

    from npubuild.pipeline import build

    if keep is not None:
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise BuildError(f"{keep}: --keep needs a new or empty folder")
        keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(keep)) if keep is not None
          else tempfile.TemporaryDirectory(prefix="npubuild-bench-")) as scratch:
        project = Path(scratch)
        for sub in ("models", "targets"):
            shutil.copytree(root / sub, project / sub)
        start = time.perf_counter()
        with CpuUse() as cpu_use:
            summary = build(project, model=model, target=target, profile=profile)
        clean_seconds = time.perf_counter() - start
        train_logs = {p.parent.parent.parent.name: p for p in (project / "build" / profile).glob("*/*/fp32/train.json")}
        # The no-op rebuild as a user runs it: a fresh process, through the library entry point.
        code = ("from pathlib import Path; from npubuild.pipeline import build; "
                f"build(Path({str(project)!r}), model={model!r}, target={target!r}, profile={profile!r}, "
                "log=lambda s: None)")
        noop = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            noop.append(time.perf_counter() - t0)
        reports = summary.reports
        training = {}
        for name, path in sorted(train_logs.items()):
            log = json.loads(path.read_text())
            training[name] = {k: log[k] for k in ("samples", "epochs", "seconds", "samples_per_second") if k in log}
        # The training step against a plain model.fit, on the data this build made (the same run).
        steps = {name: training_step_figures(project, model=name, profile=profile, build_dir=project / "build")
                 for name in training}
        # Vela for every target and every model: the shipped INT8 files built here, and for models
        # not built here, the project's own (Vela's time does not depend on how a file was made).
        int8_files = {}
        for base in (project, root):
            for p in sorted((base / "build" / profile).glob("*/builtin/*/*_int8.tflite")):
                name = p.parent.parent.parent.name
                if p.parent.name == _ship(project, name):
                    int8_files.setdefault(name, p)
        vela = vela_wall_times(project, int8_files)
    results = {
        "benchmark": f"clean build of {model}, profile {profile}, target {target}",
        "machine": _machine(),
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 2)} for r in summary.results],
        "clean_build_seconds": round(clean_seconds, 1),
        "clean_build_cpu": cpu_use.figures(),
        "models_side_by_side": summary.models_at_once,
        "noop_rebuild_seconds": {"runs": [round(s, 3) for s in noop], "best": round(min(noop), 3)},
        "vela_all_targets": vela,
        "c_array_4mib": c_array_speed(),
        "training": training,
        "reports": {name: {"models": [{k: m[k] for k in ("name", "technique", "sram_bytes", "flash_bytes",
                                                         "inference_ms", "tflite_bytes", "accuracy")}
                                      for m in rep["models"]]} for name, rep in reports.items()},
    }
    merge_results(output, results, training_step=steps)
    print(f"clean build: {clean_seconds:.0f} s; benchmark results written to "
          f"{output.relative_to(root) if output.is_relative_to(root) else output}")
    return results


def finetune_benchmark(root: Path, *, output: Path) -> dict:
    """Fine-tuning throughput of every optimization scheme, tfmot's own CQAT/PCQAT beside the vectorized
    ones (`finetune_throughput`), merged into `output` under "finetune_throughput"."""
    figures = {
        "kws": finetune_throughput(root, model="kws", samples=1000),
        # MobileNetV2 is slow to fine-tune: the PCQAT chain only, on a few images
        "quality": finetune_throughput(root, model="quality", samples=64, batch_size=16, recipes=("pcqat",)),
    }
    merge_results(output, {"finetune_throughput": figures})
    return figures


def c_array_speed(size: int = 4 * 1024 * 1024, runs: int = 3) -> dict:
    """Writing a model's C array (template render + file) against `xxd -i` on the same bytes; best of `runs`."""
    from npubuild.assets import ALIGNMENT, _environment, hex_rows
    from npubuild.stages import write_text

    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    template = _environment().get_template("model.c.j2")
    context = {"name": "bench", "guard": "BENCH", "symbol": "bench_model", "alignment": ALIGNMENT,
               "source_name": "bench.bin", "sha256": "-", "target": {"name": "-", "accelerator": "-"}}
    ours, xxd = [], []
    with tempfile.TemporaryDirectory(prefix="npubuild-carray-") as scratch:
        source = Path(scratch) / "bench.bin"
        source.write_bytes(data)
        for _ in range(runs):
            t0 = time.perf_counter()
            write_text(Path(scratch) / "bench_model.c", template.render(context, hex_rows=hex_rows(data)))
            ours.append(time.perf_counter() - t0)
            exe = shutil.which("xxd")
            if exe:
                t0 = time.perf_counter()
                with open(Path(scratch) / "xxd.c", "w") as out:
                    subprocess.run([exe, "-i", str(source)], stdout=out, check=True)
                xxd.append(time.perf_counter() - t0)
    result = {"bytes": size, "npubuild_seconds": round(min(ours), 3)}
    if xxd:
        result.update(xxd_seconds=round(min(xxd), 3), ratio=round(min(ours) / min(xxd), 2))
    print(f"  C array of {size / 2**20:.0f} MiB: npubuild {result['npubuild_seconds']:.2f} s, "
          f"xxd -i {result.get('xxd_seconds', float('nan')):.2f} s", flush=True)
    return result


def _ship(project: Path, model: str) -> str:
    from npubuild.config import load_recipe

    return load_recipe(project / "models" / f"{model}.toml").ship


def vela_wall_times(project: Path, int8_files: dict[str, Path]) -> dict:
    """Wall time of compiling every model for every target with Vela, one at a time and then
    one per CPU at once (as `invoke build --target all` does)."""
    from concurrent.futures import ThreadPoolExecutor

    from npubuild.config import resolve_targets
    from npubuild.vela import VelaOutputs, compile_with_vela

    targets = resolve_targets(project, "all")
    jobs = [(model, path, t) for model, path in sorted(int8_files.items()) for t in targets]
    workers = os.cpu_count() or 1
    times = {}
    with tempfile.TemporaryDirectory(prefix="npubuild-vela-") as scratch:
        for mode, n in (("sequential", 1), ("parallel", workers)):
            def one(job, mode=mode):
                model, path, target = job
                compile_with_vela(path, target, VelaOutputs(Path(scratch) / mode / target.name, model))

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(one, jobs))
            times[mode] = round(time.perf_counter() - t0, 2)
    result = {"models": sorted(int8_files), "targets": [t.name for t in targets], "compilations": len(jobs),
              "workers": workers, "sequential_seconds": times["sequential"], "parallel_seconds": times["parallel"],
              "speedup": round(times["sequential"] / times["parallel"], 2)}
    print(f"  Vela, {len(jobs)} compilations: sequential {times['sequential']:.1f} s, "
          f"{workers} at once {times['parallel']:.1f} s", flush=True)
    return result


def finetune_throughput(root: Path, *, model: str = "kws", samples: int = 2000, batch_size: int = 100,
                        recipes: tuple[str, ...] | None = None) -> dict:
    """Samples per second of fine-tuning `model` under each scheme of `recipes`, as the build wraps it,
    and for CQAT/PCQAT also with tfmot's own (stock) scheme, from the same models.

    Random inputs (throughput does not depend on the data). Each scheme starts from a
    model that went through the steps before it (briefly), loaded fresh from a file.
    The first epoch includes graph tracing; the second is the steady state.
    """
    import numpy as np

    from npubuild.config import load_recipe
    from npubuild.kinds import get_kind
    from npubuild.optimization_recipes import RECIPES, chain_name
    from npubuild.optimize import apply_qat, plan_recipe, wrap_for_step
    from npubuild.tfenv import import_tf
    from npubuild.train import build_model, load_keras_model

    _, keras = import_tf(seed=0)
    recipe = load_recipe(root / "models" / f"{model}.toml")
    recipes = tuple(recipes or RECIPES)
    rng = np.random.default_rng(0)
    kind = get_kind(recipe.kind)
    net0 = build_model(recipe)
    # random data of the model's own shapes: one 0/1 column per output (heads), or class indices
    x = rng.uniform(-1, 1, (samples, *net0.input_shape[1:])).astype(np.float32)
    if len(net0.outputs) > 1:
        y = rng.integers(0, 2, (samples, len(net0.outputs))).astype(np.float32)
    else:
        y = rng.integers(0, int(net0.outputs[0].shape[-1]), samples)
    targets = kind.fit_targets(recipe, y)
    steps = 2 * samples // batch_size
    results = {}
    with tempfile.TemporaryDirectory(prefix="npubuild-tput-") as scratch:
        saved = {(): Path(scratch) / "fp32.h5"}
        net0.save(saved[()])

        def measure(name, net, callbacks=()):
            net.compile(optimizer=keras.optimizers.Adam(1e-4), loss=kind.compile_args(recipe, keras)["loss"])
            t0 = time.perf_counter()
            net.fit(x, targets, epochs=1, batch_size=batch_size, verbose=0, callbacks=list(callbacks))
            t1 = time.perf_counter()
            net.fit(x, targets, epochs=1, batch_size=batch_size, verbose=0, callbacks=list(callbacks))
            t2 = time.perf_counter()
            results[name] = {"first_epoch_seconds": round(t1 - t0, 2),
                             "samples_per_second": round(samples / (t2 - t1), 2)}
            print(f"  {model} {name:<32} {results[name]['samples_per_second']:>8.2f} samples/s "
                  f"(first epoch {results[name]['first_epoch_seconds']:.1f} s)", flush=True)

        measure("fp32", load_keras_model(saved[()]))
        for recipe_name in recipes:
            for plan in plan_recipe(recipe_name):
                if plan.chain in saved:
                    continue
                wrapped = wrap_for_step(load_keras_model(saved[plan.before]), plan, recipe.optimize, steps)
                measure(plan.scheme, wrapped.model, wrapped.callbacks)
                saved[plan.chain] = Path(scratch) / f"{chain_name(plan.chain)}.h5"
                final = wrapped.strip(wrapped.model)
                if plan.step != "qat":
                    final.save(saved[plan.chain])
        # Before the vectorized clustering: tfmot's own cluster-preserving scheme, same models.
        for recipe_name in ("cqat", "pcqat"):
            if recipe_name in recipes:
                plan = plan_recipe(recipe_name)[-1]
                measure(f"{plan.scheme} (tfmot stock)",
                        apply_qat(load_keras_model(saved[plan.before]), plan.scheme, stock_cqat=True))
    return {"model": model, "samples": samples, "batch_size": batch_size, "schemes": results}


def detector_benchmark(root: Path, *, profile: str, output: Path, build_dir: Path | None = None) -> dict:
    """Time the detector stage's tuning on the shipped kws model of an existing build (`build_dir`), and
    merge the figures into `output` under "detector_tuning" (the rest of the file is kept)."""
    from npubuild.config import resolve_models
    from npubuild.kinds.kws.detector import tune_detector
    from npubuild.pipeline import shipped_paths

    recipe = resolve_models(root, "kws")[0]
    prof = recipe.profile(profile)
    paths = shipped_paths(root, recipe, profile, build_dir)
    with tempfile.TemporaryDirectory(prefix="npubuild-detector-") as scratch:
        start = time.perf_counter()
        result = tune_detector(recipe, prof, paths.int8(recipe.ship), paths.features, None,
                               Path(scratch) / "detector.json", log=print)
        seconds = time.perf_counter() - start
    figures = {"profile": profile, "seconds": round(seconds, 1), "machine": _machine(),
               "keyword_clips": result["keyword_clips"], "unknown_clips": result["unknown_clips"],
               "keyword_stream_seconds": result["keyword_stream_seconds"], "noise_seconds": result["noise_seconds"],
               "settings_scored": len(result["results"]), "chosen": result["chosen"]}
    merge_results(output, {"detector_tuning": figures})
    print(f"detector tuning: {seconds:.1f} s for {len(result['results'])} settings")
    return figures


def real_speech_benchmark(root: Path, *, profile: str, data_dir: Path, output: Path, build_dir: Path | None = None,
                          noise_seconds: float = 3600.0, trained_on: Path | None = None) -> dict:
    """The shipped kws model of `profile` on real recordings (`data_dir`, Speech Commands layout): its clip
    accuracy as `invoke evaluate --data-dir` gives it (overall and per class, FP32 and INT8), and the
    tuned streaming detector on streams of those recordings at the pace of commands (one speaker's
    keywords in a row where the folder allows, 0.3-1.0 s apart) and on `noise_seconds` of the folder's
    background noise (`kinds.kws.real_streams`). `trained_on`: the model a build trained on that folder
    (`--data-dir`) instead of the built-in data's. Merged into `output` under "real_speech" (the built-in
    model's) or "real_speech_trained_on" (by the training data's name)."""
    from npubuild.config import resolve_models
    from npubuild.evaluation_report import dataset_name, evaluate_dataset
    from npubuild.kinds.kws.detector import KwsModel, detector_json, tuned_settings
    from npubuild.kinds.kws.real_streams import folder_streams, stream_benchmark
    from npubuild.pipeline import shipped_paths

    recipe = resolve_models(root, "kws")[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="npubuild-real-") as scratch:
        clips = evaluate_dataset(root, model="kws", data_dir=data_dir, profile=profile, build_dir=build_dir,
                                 assets_dir=Path(scratch), trained_on=trained_on, log=lambda s: None)
    folder = clips["sets"]["folder"]
    paths = shipped_paths(root, recipe, profile, build_dir, trained_on=trained_on)
    settings = tuned_settings(detector_json(paths, recipe.ship))
    model = KwsModel.from_build(paths.int8(recipe.ship), paths.features, recipe.labels)
    stream_set = folder_streams(recipe, data_dir, seed=recipe.seed)
    streams = stream_benchmark(recipe, model, settings, stream_set, noise_seconds=noise_seconds, seed=recipe.seed,
                               log=print)
    figures = {"dataset": dataset_name(data_dir), "profile": profile, "machine": _machine(),
               "trained_on": clips.get("trained_on", "builtin"),
               "seconds": round(time.perf_counter() - start, 1),
               "clips": {"count": folder["count"], "int8_accuracy": folder["int8"]["accuracy"],
                         "fp32_accuracy": folder["fp32"]["accuracy"],
                         "int8_per_class": folder["int8"]["per_class"]},
               "streams": streams}
    if trained_on is None:
        merge_results(output, {"real_speech": figures})
    else:
        existing = json.loads(output.read_text()).get("real_speech_trained_on", {}) if output.is_file() else {}
        merge_results(output, {"real_speech_trained_on": {**existing, figures["trained_on"]: figures}})
    print(f"real speech ({figures['dataset']}): clips INT8 {100 * folder['int8']['accuracy']:.1f}%; streams: "
          f"{streams['in_order']}/{streams['keywords']} keywords detected in order, {streams['wrong_word']} wrong words, "
          f"{streams['false_alarms_per_hour']} false alarms per hour of noise")
    return figures


def training_step_benchmark(root: Path, *, model: str, profile: str, output: Path,
                            build_dir: Path | None = None) -> dict:
    """`training_step_figures` of an existing build, merged into `output` under "training_step" (keyed by
    model; the rest of the file is kept)."""
    figures = training_step_figures(root, model=model, profile=profile, build_dir=build_dir)
    merge_results(output, {}, training_step={model: figures})
    return figures


def training_step_figures(root: Path, *, model: str, profile: str, build_dir: Path | None = None,
                          samples: int = 3000, epochs: int = 3) -> dict:
    """Training throughput of the build's training step (`train.fit_epochs`: a generator of numpy
    batches into tf.data, with the kind's per-epoch augmentation) against a plain `model.fit` on the same
    model, data and batch size, from an existing build's features (`build_dir`). Each way trains a
    fresh model for `epochs` epochs; the first epoch (graph tracing) is left out of the steady state.
    The ratio survives a busy machine better than either figure."""
    import numpy as np

    from npubuild.config import resolve_models
    from npubuild.kinds import get_kind
    from npubuild.pipeline import shipped_paths
    from npubuild.tfenv import import_tf
    from npubuild.train import build_model, fit_epochs

    _, keras = import_tf(seed=0)
    recipe = resolve_models(root, model)[0]
    prof = recipe.profile(profile)
    kind = get_kind(recipe.kind)
    paths = shipped_paths(root, recipe, profile, build_dir, need=("features",))
    x, y = kind.load_split(recipe, paths.features, "train")
    rows = np.arange(min(samples, len(x)))
    x, y = x[rows], y[rows]

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    def fresh():
        net = build_model(recipe)
        net.compile(optimizer=keras.optimizers.Adam(prof.learning_rate), **kind.compile_args(recipe, keras))
        return net

    ways = {}
    for way in ("plain model.fit", "npubuild fit_epochs"):
        times = EpochTimes()
        net = fresh()
        if way == "plain model.fit":
            net.fit(x, kind.fit_targets(recipe, y), epochs=epochs, batch_size=prof.batch_size, shuffle=True,
                    verbose=0, callbacks=[times])
        else:
            fit_epochs(recipe, net, paths.features, x, y, epochs=epochs, batch_size=prof.batch_size,
                       seed=[recipe.seed, 0], rows=rows, callbacks=[times])
        steady = times.seconds[1:] or times.seconds
        ways[way] = {"epoch_seconds": [round(s, 2) for s in times.seconds],
                     "samples_per_second": round(len(x) / (sum(steady) / len(steady)), 1)}
        print(f"  {model} {way:<22} {ways[way]['samples_per_second']:>8.1f} samples/s "
              f"(epochs {', '.join(f'{s:.1f}' for s in times.seconds)} s)", flush=True)
    figures = {"profile": profile, "samples": int(len(x)), "batch_size": prof.batch_size, "epochs": epochs,
               "machine": _machine(), "ways": ways,
               "ratio": round(ways["npubuild fit_epochs"]["samples_per_second"]
                              / ways["plain model.fit"]["samples_per_second"], 3)}
    print(f"  {model} training step / plain model.fit: {figures['ratio']:.2f}x", flush=True)
    return figures
