"""One INT8 runner: every INT8 number comes from LiteRT's reference kernels (the bits TFLM computes)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from npubuild.int8_runner import Int8Runner, quantize, run_quantized
from npubuild.kinds.quality import data as quality_data
from npubuild.kinds.quality.predictor import ImageQualityPredictor
from npubuild.stages import CODE_ROOT

from .conftest import TARGET


def test_no_other_module_runs_a_tflite_interpreter():
    """Only int8_runner invokes a model; elsewhere an interpreter may only be asked about the file."""
    for path in sorted(CODE_ROOT.rglob("*.py")):
        if path.name == "int8_runner.py":
            continue
        source = path.read_text()
        assert ".invoke()" not in source, path.name
        assert "OpResolverType" not in source, path.name


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([-1000.0, -0.5, 0.5, 1.5, 2.5, 1000.0])
    assert quantize(x, 1.0, 0).tolist() == [-128, 0, 0, 2, 2, 127]
    assert quantize(x, 1.0, 0, "int16").tolist() == [-1000, 0, 0, 2, 2, 1000]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["kws", "quality"])
def test_worker_processes_give_the_same_bits_as_one_runner(smoke_project, model):
    root, _, _ = smoke_project
    int8 = root / "build" / "smoke" / model / "builtin" / "prune_cluster" / f"{model}_int8.tflite"
    runner = Int8Runner(int8)
    q = np.random.default_rng(3).integers(-128, 128, (150, *runner.input.shape[1:])).astype(np.int8)
    here = runner.run(q)
    there = run_quantized(int8, q, processes=2)
    assert len(here) == len(there) == len(runner.outputs)
    for a, b in zip(here, there, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.slow
def test_thresholds_and_predictor_use_the_reference_bits(smoke_project):
    """The quality evaluation's int8 thresholds were chosen on reference-kernel outputs: recomputing the
    validation scores with the runner gives the F1-best threshold it stored; the predictor's raw outputs
    are the runner's."""
    from npubuild.kinds.quality.head_metrics import choose_threshold, run_int8_heads, threshold_q

    root, _, _ = smoke_project
    base = root / "build" / "smoke" / "quality" / "builtin"
    int8 = base / "prune_cluster" / "quality_int8.tflite"
    evaluation = json.loads((base / "prune_cluster" / "evaluation.json").read_text())
    images, labels = quality_data.load_images(base / "data" / "features.npz", "val")
    raw, quant = run_int8_heads(int8, quality_data.to_model_input(images))
    runner = Int8Runner(int8)
    direct = runner.run(runner.quantize_input(quality_data.to_model_input(images)))
    order = [h["output_index"] for h in json.loads(
        (root / "firmware_assets" / TARGET / "quality" / "quality_meta.json").read_text())["heads"]]
    for i, head in enumerate(evaluation["heads"]):
        assert np.array_equal(raw[:, i], direct[order[i]].reshape(-1))
        scores = np.float32(quant[i][0]) * (raw[:, i].astype(np.float32) - np.float32(quant[i][1]))
        t = choose_threshold(labels[:, i], scores)
        assert t == evaluation["thresholds"]["int8"][head]
        assert threshold_q(t, *quant[i]) == evaluation["threshold_q"][head]
    folder = root / "firmware_assets" / TARGET / "quality"
    predictor = ImageQualityPredictor.create(int8, folder / "quality_meta.json")
    for image in images[:8]:
        expected = runner.run(runner.quantize_input(quality_data.to_model_input(quality_data.prepare(image, 128)))[None])
        assert predictor.raw(image).tolist() == [int(expected[o].reshape(-1)[0]) for o in order]
    header = (folder / "quality_meta.h").read_text()
    assert re.search(r"QUALITY_HEAD_THRESHOLD_Q \{([^}]*)\}", header).group(1).replace(" ", "") == ",".join(
        str(evaluation["threshold_q"][h]) for h in evaluation["heads"])
