"""The image-quality model end to end on the smoke profile: assets, header, predictor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from npubuild.kinds.quality import data as quality_data
from npubuild.kinds.quality.predictor import ImageQualityPredictor

from .conftest import TARGET, report_model

pytestmark = pytest.mark.slow


def header_array(text: str, name: str) -> list[float]:
    match = re.search(rf"#define {name} \{{([^}}]*)\}}", text)
    assert match, name
    return [float(v.rstrip("f")) for v in match.group(1).split(",")]


def paths(root):
    folder = root / "firmware_assets" / TARGET / "quality"
    int8 = root / "build" / "smoke" / "quality" / "builtin" / "prune_cluster" / "quality_int8.tflite"
    return folder, int8


def test_report_lists_the_quality_model_on_the_npu(smoke_project):
    root, _, _ = smoke_project
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    model = report_model(report, "quality")
    assert model["technique"] == "prune_cluster"
    assert model["cpu_ops"] == 0 and model["npu_ops"] > 50
    assert model["sram_bytes"] > 0 and model["flash_bytes"] > 0
    assert set(model["per_head"]) == {"blurry", "too_dark", "too_bright", "noisy"}
    assert model["accuracy"]["int8"] == pytest.approx(np.mean([h["f1"] for h in model["per_head"].values()]),
                                                      abs=1e-6)
    weights = json.loads((root / "build" / "smoke" / "quality" / "builtin" / "prune_cluster" / "weights.json")
                         .read_text())
    assert weights["sparsity_prunable"] >= 0.475 and weights["max_values_per_channel"] <= 8


def test_int8_thresholds_in_the_header_decide_as_the_predictor(smoke_project):
    """Firmware compares raw int8 outputs with HEAD_THRESHOLD_Q; the predictor compares float
    scores with its thresholds. On the whole test split they must not disagree once."""
    from npubuild.int8_runner import Int8Runner

    root, _, _ = smoke_project
    folder, int8 = paths(root)
    header = (folder / "quality_meta.h").read_text()
    order = [int(v) for v in header_array(header, "QUALITY_HEAD_OUTPUT_INDEX")]
    thresholds_q = header_array(header, "QUALITY_HEAD_THRESHOLD_Q")
    predictor = ImageQualityPredictor.create(int8, folder / "quality_meta.json")
    heads = [i.name for i in predictor.issues]
    runner = Int8Runner(int8)  # the reference kernels: the bits TFLM computes on the device
    images, _ = quality_data.load_images(root / "build" / "smoke" / "quality" / "builtin" / "data" / "features.npz",
                                         "test")
    disagreements, fired = 0, 0
    for image in images:
        # firmware: q = pixel - 128, then raw int8 outputs against the int8 thresholds
        outputs = runner.run((image.astype(np.int16) - 128).astype(np.int8)[None])
        raw = [int(outputs[o].reshape(-1)[0]) for o in order]
        firmware = {h for h, q, t in zip(heads, raw, thresholds_q, strict=True) if q >= t}
        host = {name for name, _ in predictor.predict(image)}
        disagreements += firmware != host
        fired += len(host)
    assert disagreements == 0
    assert fired > 0  # the comparison decided something


def test_predictor_takes_any_image_size(smoke_project):
    root, _, _ = smoke_project
    folder, int8 = paths(root)
    predictor = ImageQualityPredictor.create(int8, folder / "quality_meta.json")
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    found = predictor.predict(big)
    scores = predictor.scores(big)
    assert set(scores) == {"blurry", "too_dark", "too_bright", "noisy"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert [name for name, _ in found] == sorted((n for n in scores if scores[n] >= next(
        i.threshold for i in predictor.issues if i.name == n)), key=lambda n: -scores[n])
    # two views (views.py): the blur head reads the detail view, the others the whole photo
    from npubuild.int8_runner import Int8Runner
    from npubuild.kinds.quality.views import detail_view

    photo = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    views = predictor.views(photo)
    assert views.shape == (2, 128, 128, 3)
    assert np.array_equal(views[0], quality_data.prepare(photo, 128))
    assert np.array_equal(views[1], detail_view(photo, 128, predictor.detail_side))
    runner = Int8Runner(int8)
    outputs = [runner.run((v.astype(np.int16) - 128).astype(np.int8)[None]) for v in views]
    expected = [int(outputs[int(i.view == "detail")][i.output_index].reshape(-1)[0]) for i in predictor.issues]
    assert predictor.raw(photo).tolist() == expected
    assert [i.view for i in predictor.issues] == ["detail", "whole", "whole", "whole"]


def test_quality_header_compiles_and_indexes_the_outputs(smoke_project, tmp_path):
    root, _, _ = smoke_project
    folder, _ = paths(root)
    main = tmp_path / "main.c"
    main.write_text(textwrap.dedent("""
        #include <stdint.h>
        #include <stdio.h>
        #include "quality_model.h"
        #include "quality_meta.h"
        int main(void) {
            static const int index[QUALITY_NUM_HEADS] = QUALITY_HEAD_OUTPUT_INDEX;
            static const int threshold_q[QUALITY_NUM_HEADS] = QUALITY_HEAD_THRESHOLD_Q;
            static const float threshold[QUALITY_NUM_HEADS] = QUALITY_HEAD_THRESHOLD;
            static const char *const heads[QUALITY_NUM_HEADS] = QUALITY_LABELS;
            int8_t q = QUALITY_INPUT_FROM_PIXEL(255);
            printf("%d %d %s %d %f %d\\n", index[QUALITY_HEAD_NOISY], threshold_q[0], heads[QUALITY_HEAD_BLURRY],
                   (int)q, (double)threshold[0], QUALITY_IMAGE_HEIGHT);
            return (uintptr_t)quality_model % QUALITY_MODEL_ALIGNMENT != 0;
        }
    """))
    cc = shutil.which("cc") or shutil.which("gcc")
    exe = tmp_path / "main"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main),
                           str(folder / "quality_model.c"), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0
    noisy_index, _, first, q, _, height = run.stdout.split()
    meta = json.loads((folder / "quality_meta.json").read_text())
    assert int(noisy_index) == meta["heads"][3]["output_index"] and first == "blurry"
    assert q == "127" and height == "128"
