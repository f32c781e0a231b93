"""End to end on the smoke profile: real eSpeak NG, TensorFlow, LiteRT, Vela and C compiler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npubuild.errors import BuildError
from npubuild.pipeline import build, check_reports

from .conftest import TARGET, code_env, report_model

pytestmark = pytest.mark.slow


def test_build_writes_assets_and_report(smoke_project):
    root, summary, _ = smoke_project
    folder = root / "firmware_assets" / TARGET
    for name in ("kws/kws_model.c", "kws/kws_model.h", "kws/kws_meta.h", "memory_report.json", "memory_report.md",
                 "memory_chart.png"):
        assert (folder / name).is_file(), name
    assert f"| {TARGET} | ethos-u55-128 | kws | prune_cluster |" in (root / "firmware_assets" / "summary.md").read_text()
    report = json.loads((folder / "memory_report.json").read_text())
    assert report["target"]["accelerator"] == "ethos-u55-128"
    assert report["target"]["system_config"] == "Ethos_U55_High_End_Embedded"
    assert [m["name"] for m in report["models"]] == ["kws", "quality"]
    model = report_model(report, "kws")
    assert model["technique"] == "prune_cluster"
    assert model["cpu_ops"] == 0 and model["npu_ops"] > 0
    # DS-CNN-L: 28.35 M MACs, INT8 TFLite within 2% of 506,400 bytes
    assert model["macs"] == pytest.approx(28.35e6, rel=0.01)
    assert abs(model["tflite_bytes"] - 506_400) / 506_400 < 0.02
    assert 0.0 <= model["accuracy"]["int8"] <= 1.0
    assert model["sram_bytes"] == model["arena_bytes"] >= model["vela_sram_bytes"] + 2048
    # both models run one at a time on this target: one shared arena, the larger, plus both models' I/O
    quality = report_model(report, "quality")
    # ... and the application C beside each model (app_code: front end, detector, preprocessing)
    assert model["code_flash_bytes"] > 0 and model["app_sram_bytes"] > 0 and quality["code_flash_bytes"] > 0
    aligned = lambda n: -(-n // 16) * 16  # noqa: E731 (I/O buffers 16-byte aligned, as the image has them)
    assert report["total"]["sram_bytes"] == (max(model["arena_bytes"], quality["arena_bytes"])
                                             + aligned(model["io_bytes"]) + aligned(quality["io_bytes"])
                                             + model["app_sram_bytes"] + quality["app_sram_bytes"])
    assert report["total"]["flash_bytes"] == (model["flash_bytes"] + quality["flash_bytes"]
                                              + model["code_flash_bytes"] + quality["code_flash_bytes"])
    assert report["total"]["fits"] is True
    assert model["top_cycles"][0]["value"] >= model["top_cycles"][-1]["value"] > 0
    assert model["top_staging"][0]["value"] == max(layer["value"] for layer in model["top_staging"])


def test_all_stages_ran_once_then_nothing_reruns(smoke_project):
    """The clean build ran its two models side by side (a process each, one per CPU); the rebuild with
    nothing to do starts no model process."""
    root, summary, _ = smoke_project
    assert all(r.ran for r in summary.results)
    assert summary.models_at_once == min(2, os.cpu_count() or 1)
    again = build(root, model="all", target=TARGET, profile="smoke", log=lambda s: None)
    assert [r.ran for r in again.results] == [False] * len(summary.results)
    assert again.models_at_once == 1


def test_noop_build_does_not_import_tensorflow(smoke_project):
    root, _, _ = smoke_project
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from npubuild.pipeline import build, check_reports
        s = build(Path({str(root)!r}), model="all", target={TARGET!r}, profile="smoke", log=lambda m: None)
        assert not any(r.ran for r in s.results), s.results
        heavy = sorted(m for m in ("tensorflow", "tf_keras", "ai_edge_litert", "tensorflow_model_optimization")
                       if m in sys.modules)
        print("imported:", heavy)
        assert not heavy
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout


def test_new_target_reruns_only_compile_assets_report(smoke_project):
    root, _, _ = smoke_project
    text = (root / "targets" / f"{TARGET}.toml").read_text()
    other = root / "targets" / "tight-budget.toml"
    other.write_text(text.replace(f'name = "{TARGET}"', 'name = "tight-budget"')
                     .replace("ml_share = 0.125  # 4 MiB for models", "ml_share = 0.03"))
    try:
        summary = build(root, model="kws", target="tight-budget", profile="smoke", log=lambda s: None)
    finally:
        other.unlink()
    ran = {r.name.split()[0] for r in summary.results if r.ran}
    assert ran == {"compile", "assets", "report", "image"}
    assert (root / "firmware_assets" / "tight-budget" / "memory_report.json").is_file()


def test_budget_exceeded_fails_naming_model_memory_and_bytes(smoke_project):
    root, _, _ = smoke_project
    text = (root / "targets" / f"{TARGET}.toml").read_text()
    small = root / "targets" / "too-small.toml"
    small.write_text(text.replace(f'name = "{TARGET}"', 'name = "too-small"')
                     .replace("ml_share = 1.0  # the evaluation", "ml_share = 0.03125  # 64 KiB; the evaluation"))
    try:
        with pytest.raises(BuildError) as err:
            build(root, model="kws", target="too-small", profile="smoke", log=lambda s: None)
    finally:
        small.unlink()
    report = json.loads((root / "firmware_assets" / "too-small" / "memory_report.json").read_text())
    over = report["total"]["sram_bytes"] - 65_536
    message = str(err.value)
    assert "SRAM" in message and "kws" in message and f"by {over} bytes" in message
    assert "\n" not in message
    # the firmware image (firmware_image.py) does not link: the linker's own message, the same bytes over
    assert "; the linker agrees: ld: " in message and f"ld: region `ML_SRAM' overflowed by {over} bytes" in message
    link = json.loads((root / "firmware_assets" / "too-small" / "image" / "link_report.json").read_text())
    assert link["linked"] is False and any("ML_SRAM" in line for line in link["linker"])
    print(f"\nover-budget target: SRAM over by {over} bytes; linker: {link['linker']}")
    # re-checking the written report says the same; the good target passes
    with pytest.raises(BuildError, match=f"SRAM over budget by {over} bytes"):
        small.write_text(text.replace(f'name = "{TARGET}"', 'name = "too-small"')
                         .replace("ml_share = 1.0  # the evaluation", "ml_share = 0.03125  # 64 KiB; the evaluation"))
        try:
            check_reports(root, target="too-small")
        finally:
            small.unlink()
    assert TARGET in check_reports(root, target=TARGET, log=lambda s: None)


def test_changed_param_names_the_reason_and_what_follows(smoke_project):
    root, _, _ = smoke_project
    recipe = root / "models" / "kws.toml"
    original = recipe.read_text()
    lines: list[str] = []
    try:
        recipe.write_text(original.replace("learning_rate = 0.001", "learning_rate = 0.0011", 1))
        summary = build(root, model="kws", target=TARGET, profile="smoke", dry_run=True, log=lines.append)
    finally:
        recipe.write_text(original)
    assert not any(r.ran for r in summary.results)
    assert "[data kws] up to date" in lines
    assert "[train kws] would run: changed param learning_rate: 0.001 -> 0.0011" in lines
    assert any(line.startswith("[convert kws prune_cluster] would run: input ") for line in lines)
    assert any(line.startswith(f"[report {TARGET}] would run: input ") for line in lines)


def test_generated_c_compiles_with_warnings_as_errors(smoke_project, tmp_path):
    root, _, _ = smoke_project
    folder = root / "firmware_assets" / TARGET / "kws"
    main = tmp_path / "main.c"
    main.write_text(textwrap.dedent("""
        #include <stdint.h>
        #include <stdio.h>
        #include "kws_model.h"
        #include "kws_meta.h"
        int main(void) {
            static const char *const labels[KWS_NUM_LABELS] = KWS_LABELS;
            static const int input_dims[KWS_INPUT_RANK] = KWS_INPUT_DIMS;
            static const float mean[KWS_NUM_MFCC] = KWS_MFCC_MEAN;
            if ((uintptr_t)kws_model % KWS_MODEL_ALIGNMENT != 0) return 1;
            if (input_dims[1] != KWS_NUM_FRAMES * KWS_NUM_MFCC) return 2;
            printf("%u %s %s %d %f %u\\n", (unsigned)kws_model_len, labels[2], (const char *)&kws_model[4],
                   input_dims[1], (double)mean[0], (unsigned)KWS_ARENA_SIZE);
            return 0;
        }
    """))
    exe = tmp_path / "main"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is required"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main),
                           str(folder / "kws_model.c"), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    length, label, ident, dims, _, arena = run.stdout.split()
    compiled = root / "build" / "smoke" / "kws" / "builtin" / "prune_cluster" / "vela" / TARGET / "kws_vela.tflite"
    assert int(length) == compiled.stat().st_size
    assert label == "yes" and ident.startswith("TFL3") and dims == "490"
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    assert int(arena) == report_model(report, "kws")["arena_bytes"]


def test_broken_chain_fails_naming_the_layer(smoke_project, tmp_path):
    """A prune step whose schedule never fires (frequency beyond the fine-tuning length)."""
    from .conftest import make_project

    root = make_project(tmp_path / "broken")
    # the session build's data and FP32 model, with their stamps: neither stage depends on what changes here
    built, here = (r / "build" / "smoke" / "kws" / "builtin" for r in (smoke_project[0], root))
    for part in ("data", "fp32"):
        shutil.copytree(built / part, here / part)
    recipe = root / "models" / "kws.toml"
    text = recipe.read_text().replace('ship = "prune_cluster"', 'ship = "prune"')
    recipe.write_text(text.replace("prune_frequency = 0 ", "prune_frequency = 100000 "))
    lines: list[str] = []
    with pytest.raises(BuildError) as err:
        build(root, model="kws", target=TARGET, profile="smoke", log=lines.append)
    assert any(line.startswith("[pruning kws] running") for line in lines)
    assert not any(line.startswith(("[data kws] running", "[train kws] running")) for line in lines)
    message = str(err.value)
    assert message.startswith("recipe prune lost what its steps gained: kws_int8.tflite: layer conv2d has sparsity")
    assert "below 95% of the pruning target (0.475)" in message
    assert not (root / "firmware_assets").exists()


def test_target_all_builds_every_target_with_vela_in_parallel(smoke_project):
    from npubuild.config import resolve_targets

    root, _, _ = smoke_project
    lines: list[str] = []
    summary = build(root, model="all", target="all", profile="smoke", jobs=2, log=lines.append)
    targets = resolve_targets(root, "all")
    assert len(targets) >= 5
    ran = {r.name.split()[0] for r in summary.results if r.ran}
    assert ran <= {"compile", "assets", "report", "image"}
    table = (root / "firmware_assets" / "summary.md").read_text()
    for t in targets:
        folder = root / "firmware_assets" / t.name
        for name in ("memory_report.json", "memory_report.md", "memory_chart.png", "kws/kws_model.c",
                     "kws/kws_meta.h", "quality/quality_model.c", "quality/quality_meta.h"):
            assert (folder / name).is_file(), (t.name, name)
        rep = json.loads((folder / "memory_report.json").read_text())
        assert [m["name"] for m in rep["models"]] == ["kws", "quality"]
        for model in rep["models"]:
            assert model["cpu_ops"] == 0, (t.name, model["name"])
            assert f"| {t.name} | {t.accelerator} | {model['name']} |" in table
            meta = (folder / model["name"] / f"{model['name']}_meta.h").read_text()
            guard = model["name"].upper()
            if t.fast_memory:  # arena in DRAM, NPU fast scratch in SRAM
                assert rep["total"]["dram_bytes"] >= model["arena_bytes"] and model["fast_scratch_bytes"] > 0
                assert f"#define {guard}_FAST_MEMORY_SIZE {model['fast_scratch_bytes']}u" in meta
            else:
                assert f"#define {guard}_FAST_MEMORY_SIZE 0u" in meta
    u55 = report_model(json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text()), "kws")
    u85 = report_model(json.loads((root / "firmware_assets" / "corstone-320-u85-256" / "memory_report.json")
                                  .read_text()), "kws")
    assert u85["cycles"] != u55["cycles"]


def test_report_flash_is_the_generated_array(smoke_project, tmp_path):
    """The flash figure is the model array's bytes as the C compiler lays them out, padded to alignment."""
    root, _, _ = smoke_project
    folder = root / "firmware_assets" / TARGET / "kws"
    cc = shutil.which("cc") or shutil.which("gcc")
    obj = tmp_path / "kws_model.o"
    subprocess.run([cc, "-c", "-O2", f"-I{folder}", str(folder / "kws_model.c"), "-o", str(obj)], check=True)
    objdump = shutil.which("objdump")
    assert objdump, "binutils objdump is required"
    sections = subprocess.run([objdump, "-h", str(obj)], capture_output=True, text=True, check=True).stdout
    row = next(line.split() for line in sections.splitlines() if ".rodata.npu_model" in line)
    size, align = int(row[2], 16), int(row[-1].split("**")[1])
    model = report_model(json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text()), "kws")
    assert 2 ** align == 16
    assert model["flash_bytes"] == -(-size // 16) * 16
    assert model["vela_flash_bytes"] < model["flash_bytes"]


def test_stage_output_reaches_the_builds_logger(smoke_project):
    """What stages say (training epochs, evaluation figures) goes through the build's log, not print;
    the session build runs its models side by side, so each such line names its model."""
    _, _, lines = smoke_project
    for model in ("kws", "quality"):
        assert any(line.startswith(f"  {model}: training epoch 1/1: ") for line in lines)
        assert any(line.startswith(f"  {model}: fine-tuning epoch 1/") for line in lines)
    assert any(line.startswith("  kws: test accuracy: FP32 ") for line in lines)
    assert any(line.startswith("  quality: test macro-F1: FP32 ") for line in lines)
    assert any(line.startswith("  kws: detector: every ") for line in lines)
    # stage lines name their model already: as in a build of one model
    assert "[train kws] running: never built" in lines and "[train quality] running: never built" in lines


def test_one_model_build_keeps_the_whole_firmware_in_the_report(smoke_project):
    """A build of one model reports every model whose assets are in the target folder, and headers
    and reports name the profile and dataset that made each one."""
    root, _, _ = smoke_project
    build(root, model="kws", target=TARGET, profile="smoke", log=lambda s: None)
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["kws", "quality"]
    assert {(m["profile"], m["dataset"]) for m in report["models"]} == {("smoke", "builtin")}
    quality = report_model(report, "quality")
    kws = report_model(report, "kws")
    assert report["total"]["flash_bytes"] == sum(m["flash_bytes"] + m["code_flash_bytes"] for m in (kws, quality))
    header = (root / "firmware_assets" / TARGET / "kws" / "kws_meta.h").read_text()
    assert '#define KWS_PROFILE "smoke"\n' in header and '#define KWS_DATASET "builtin"\n' in header
    assert "| smoke profile, builtin data |" in (root / "firmware_assets" / TARGET / "memory_report.md").read_text()


def test_a_build_from_other_data_does_not_replace_assets_silently(smoke_project, tmp_path):
    from .conftest import tree_hashes

    root, _, _ = smoke_project
    before = tree_hashes(root / "firmware_assets")
    data = tmp_path / "my_recordings"
    data.mkdir()
    with pytest.raises(BuildError) as err:
        build(root, model="kws", target=TARGET, profile="smoke", data_dir=data, log=lambda s: None)
    message = str(err.value)
    assert message.startswith(f"{root / 'firmware_assets' / TARGET / 'kws'}: holds the kws model built with "
                              f"profile 'smoke' from dataset 'builtin'")
    assert "dataset 'my_recordings (dir-" in message and "--replace-assets" in message
    assert tree_hashes(root / "firmware_assets") == before


def test_training_pruning_and_clustering_end_with_batchnorm_statistics_of_the_profile(smoke_project):
    """The kws smoke profile asks for 64 samples: training and each fine-tuning step of the shipped chain
    log them for the 11 batch normalization layers of DS-CNN-L; quality asks for none and logs none."""
    folder = smoke_project[0] / "build" / "smoke"
    for log in ("fp32/train.json", "steps/prune/train.json", "steps/prune+cluster/train.json"):
        kws = json.loads((folder / "kws" / "builtin" / log).read_text())["batchnorm"]
        assert (kws["samples"], kws["layers"]) == (64, 11), log
        assert "batchnorm" not in json.loads((folder / "quality" / "builtin" / log).read_text()), log


def test_validating_fewer_epochs_trains_the_same_weights(smoke_project):
    """The train stage scores the validation split after a few epochs only (`validation_epochs`): the
    weights must come out bit for bit as with a score after every epoch (DS-CNN-L, with its dropout and
    batch normalization, on the smoke build's features and per-epoch renderings)."""
    from npubuild.config import load_recipe
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf
    from npubuild.train import build_model, fit_epochs, timing_note, validation_epochs

    assert validation_epochs(12) == [3, 6, 9, 12] and validation_epochs(1) == [1]
    quick = {"inputs_seconds": 0.5, "before_first_epoch_seconds": 0.2, "epoch_seconds": [30.0],
             "after_last_epoch_seconds": 0.1}
    assert timing_note(quick, "training") is None
    assert timing_note({**quick, "before_first_epoch_seconds": 57.0}, "fine-tuning") == (
        "  fine-tuning: 58 s outside the epochs (inputs 0 s, before the first epoch 57 s, after the last 0 s)")
    assert validation_epochs(5) == [2, 4, 5] and validation_epochs(16) == [4, 8, 12, 16]
    root = smoke_project[0]
    recipe = load_recipe(root / "models" / "kws.toml")
    kind = get_kind(recipe.kind)
    features = root / "build" / "smoke" / "kws" / "builtin" / "data" / "features.npz"
    x, y = kind.load_split(recipe, features, "train")
    x_val, y_val = kind.load_split(recipe, features, "val")
    rows = np.arange(0, len(y), 3)  # a third of the split, whole renderings per epoch as the build draws them
    runs = []
    for freq in (1, [3]):
        _, keras = import_tf(seed=recipe.seed)
        model = build_model(recipe)
        model.compile(optimizer=keras.optimizers.Adam(0.001), **kind.compile_args(recipe, keras))
        history = fit_epochs(recipe, model, features, x[rows], y[rows], epochs=3, batch_size=32,
                             seed=[recipe.seed, 0], rows=rows, validation_data=(x_val, kind.fit_targets(recipe, y_val)),
                             validation_freq=freq)
        runs.append((model.get_weights(), history.history))
        timing = history.timing  # where the fit's time went, kept in the stage logs
        assert len(timing["epoch_seconds"]) == 3 and min(timing["epoch_seconds"]) > 0
        assert min(timing[k] for k in ("inputs_seconds", "before_first_epoch_seconds", "after_last_epoch_seconds")) >= 0
    (every, every_history), (last, last_history) = runs
    assert len(every_history["val_loss"]) == 3 and len(last_history["val_loss"]) == 1
    assert every_history["val_loss"][-1] == pytest.approx(last_history["val_loss"][0], rel=1e-6)
    assert len(every) == len(last) and all(np.array_equal(a, b) for a, b in zip(every, last, strict=True))


def test_arrays_reach_keras_without_tf_data_autotuning():
    """Datasets the project hands Keras have autotuning off (its thread made deleting an iterator wait
    up to a minute after a fit's last batch), and keep the arrays' order and batching."""
    from npubuild.tfenv import array_batches, import_tf

    tf, _ = import_tf()
    x, y = np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5)
    batches = array_batches((x, y), 2)
    assert batches.options().autotune.enabled is False
    got = list(batches.as_numpy_iterator())
    assert [len(b[1]) for b in got] == [2, 2, 1]
    assert np.array_equal(np.concatenate([b[0] for b in got]), x) and np.array_equal(np.concatenate([b[1] for b in got]), y)
    heads = list(array_batches((x, [y, 2 * y]), 4).as_numpy_iterator())  # one target array per head, as a list
    assert [b[1][1].tolist() for b in heads] == [[0, 2, 4, 6], [8]]


def test_tensorflow_threads_do_not_spin():
    """A process that imports TensorFlow through the project runs its thread pools without spinning
    (idle workers of one model's process took the cores from the other model's beside it)."""
    code = ("from npubuild.tfenv import import_tf; tf, _ = import_tf(seed=1); "
            "from tensorflow.python.eager import context; assert float(tf.constant(1.0) + 1.0) == 2.0; "
            "print(context.context().config.experimental.disable_thread_spinning)")
    out = subprocess.run([sys.executable, "-c", code], env=code_env(), check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == ["True"]
