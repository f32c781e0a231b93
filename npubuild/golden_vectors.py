"""Golden vectors: a few integer inputs and the outputs the INT8 model (before Vela; the reference
kernels on the host) gives for them, for an on-target unit test of the whole chain (driver, NPU,
compiled model). From the test split when the build has one, else from seeded random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe

GOLDEN_COUNT = 3


def _test_indices(n: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))}) if n else []


def quantized_test_inputs(recipe: Recipe, int8: Path, features: Path) -> np.ndarray:
    """The whole test split as the INT8 model's int8 inputs (as firmware feeds them)."""
    from npubuild.int8_runner import quantize
    from npubuild.kinds import get_kind
    from npubuild.tflite_file import io_tensors

    x, _ = get_kind(recipe.kind).load_split(recipe, features, "test")
    inp = io_tensors(int8)[0]
    q = quantize(x, inp.scale, inp.zero_point)
    return q.reshape(len(x), -1)


def run_litert(int8: Path, inputs: np.ndarray) -> np.ndarray:
    """Integer outputs of the quantized model for integer inputs, every output flattened in the
    file's order, one row per input: `int8_runner` (the reference kernels TFLM computes)."""
    from npubuild.int8_runner import run_quantized

    outputs = run_quantized(int8, inputs)
    return np.concatenate([o.reshape(len(inputs), -1) for o in outputs], axis=1)


def golden_vectors(recipe: Recipe, int8: Path, features: Path, count: int = GOLDEN_COUNT) -> dict:
    inputs = quantized_test_inputs(recipe, int8, features)
    picked = _test_indices(len(inputs), count)
    gin = inputs[picked]
    return {"source": f"int8 inputs from the test split (samples {', '.join(map(str, picked))})",
            "inputs": gin, "outputs": run_litert(int8, gin)}


def c_rows(values: np.ndarray, per_row: int = 24) -> str:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    rows = [", ".join(flat[i:i + per_row]) for i in range(0, len(flat), per_row)]
    return "        " + ",\n        ".join(rows)


def random_golden(int8: Path, input_info, count: int = GOLDEN_COUNT, seed: int = 0, run=None) -> dict:
    """Golden vectors without a dataset: seeded random inputs in the input's integer type (int8; int16
    for 16x8 models) and the model's outputs: LiteRT, or `run(path, inputs)` -> one array per output."""
    info = np.iinfo(input_info.dtype)
    inputs = np.random.default_rng(seed).integers(info.min, info.max + 1, (count, input_info.size))
    inputs = inputs.astype(input_info.dtype)
    outputs = run_litert(int8, inputs) if run is None else \
        np.concatenate([o.reshape(count, -1) for o in run(int8, inputs)], axis=1)
    return {"source": f"seeded random {input_info.dtype} inputs (seed {seed}; no dataset came with the model)",
            "inputs": inputs, "outputs": outputs}
