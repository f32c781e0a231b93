"""What firmware needs beyond the model array: the operators to register, golden vectors.

- Operators: read from the Vela-compiled file itself (its operator codes): the
  Ethos-U custom operator plus whatever Vela left on the CPU, so the resolver
  registers exactly what the model calls ("Failed to get registration from op
  code CUSTOM" cannot happen, and no unused kernel is linked).
- Golden vectors: a few int8 inputs from the test split and the int8 outputs the
  INT8 model (before Vela; LiteRT on the host) gives for them, for an on-target
  unit test of the whole chain (driver, NPU, compiled model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.errors import BuildError

GOLDEN_COUNT = 3


def compiled_operators(vela_tflite: Path) -> list[tuple[str, str | None]]:
    """(builtin name, custom code) of every operator code in a (Vela-compiled) TFLite file."""
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
    from ethosu.vela.tflite.Model import Model

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = Model.GetRootAsModel(vela_tflite.read_bytes(), 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.append((names.get(builtin, f"BUILTIN_{builtin}"), custom.decode() if custom else None))
    return ops


def tflm_method(builtin: str) -> str:
    """TFLM's MicroMutableOpResolver method for a builtin operator: CONV_2D -> AddConv2D."""
    parts = builtin.split("_")
    return "Add" + "".join(p.upper() if p[:1].isdigit() else p[:1] + p[1:].lower() for p in parts)


def resolver_entries(vela_tflite: Path) -> list[dict]:
    entries = []
    for builtin, custom in compiled_operators(vela_tflite):
        if builtin == "CUSTOM":
            if custom != "ethos-u":
                raise BuildError(f"{vela_tflite}: custom operator {custom!r} has no TFLM kernel to register")
            entries.append({"method": "AddEthosU", "op": "ethos-u (custom: the NPU command stream)"})
        else:
            entries.append({"method": tflm_method(builtin), "op": f"{builtin} (on the CPU)"})
    return entries


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
    from npubuild.int8_runner import run_int8

    outputs = run_int8(int8, inputs)
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
