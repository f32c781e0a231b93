"""Firmware files of the smoke build: operators to register, golden vectors, TFLM parity."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from npubuild.config import load_recipe
from npubuild.golden_vectors import quantized_test_inputs, run_litert
from npubuild.op_resolver import compiled_operators, tflm_method
from npubuild.tflite_file import io_tensors

from .conftest import TARGET

pytestmark = pytest.mark.slow

SHIPPED = {"kws": "prune_cluster", "quality": "prune_cluster"}


def files(root, model):
    base = root / "build" / "smoke" / model / "builtin"
    return (base / SHIPPED[model] / f"{model}_int8.tflite", base / "data" / "features.npz",
            base / SHIPPED[model] / "vela" / TARGET / f"{model}_vela.tflite",
            root / "firmware_assets" / TARGET / model)


def test_tflm_method_names():
    assert [tflm_method(n) for n in ("CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX", "AVERAGE_POOL_2D",
                                     "FULLY_CONNECTED")] == [
        "AddConv2D", "AddDepthwiseConv2D", "AddSoftmax", "AddAveragePool2D", "AddFullyConnected"]


@pytest.mark.parametrize("model", ["kws", "quality"])
def test_resolver_registers_exactly_what_the_compiled_model_calls(smoke_project, model):
    root, _, _ = smoke_project
    _, _, compiled, folder = files(root, model)
    header = (folder / f"{model}_ops.h").read_text()
    registered = re.findall(r"resolver\.(Add\w+)\(\)", header)
    expected = ["AddEthosU" if op == "CUSTOM" else tflm_method(op) for op, _ in compiled_operators(compiled)]
    assert registered == expected == ["AddEthosU"]  # all on the NPU here
    assert f"#define {model.upper()}_NUM_OPS 1" in header and "no operator on the CPU" in header


@pytest.mark.parametrize("model", ["kws", "quality"])
def test_tflm_gives_litert_bits_on_golden_vectors_and_the_test_split(smoke_project, model):
    """The firmware runtime's reference (TFLM, pip) against the host runtime (LiteRT), bit for bit,
    on the INT8 model before Vela (TFLM has no host kernel for the Ethos-U operator)."""
    from tflite_micro import runtime

    root, _, _ = smoke_project
    int8, features, _, folder = files(root, model)
    recipe = load_recipe(root / "models" / f"{model}.toml")
    inputs = quantized_test_inputs(recipe, int8, features)
    expected = run_litert(int8, inputs)
    tflm = runtime.Interpreter.from_file(str(int8))
    n_out = len(io_tensors(int8)[1])
    got = []
    for row in inputs:
        tflm.set_input(row.reshape(tflm.get_input_details(0)["shape"]), 0)
        tflm.invoke()
        got.append(np.concatenate([tflm.get_output(i).reshape(-1) for i in range(n_out)]))
    got = np.array(got, np.int8)
    # the golden vectors in the C file: test-split samples, bit-identical in TFLM
    golden = (folder / f"{model}_golden.c").read_text()
    first_output = re.search(r"_golden_output\[[^\]]+\]\[[^\]]+\] = \{\s*\{([^}]*)\}", golden).group(1)
    assert [int(v) for v in first_output.replace("\n", " ").split(",") if v.strip()] == expected[0].tolist()
    picked = [int(i) for i in np.linspace(0, len(inputs) - 1, 3)]
    assert np.array_equal(got[picked], expected[picked])
    # the whole split: one quantization step apart on rare outputs at most (TFLM's and TFLite's reference
    # kernels round differently at some ties, which a model's weights may or may not meet)
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.02, (int((diff > 0).sum()), diff.size)


def test_golden_vectors_compile_and_have_the_model_sizes(smoke_project, tmp_path):
    root, _, _ = smoke_project
    _, _, _, folder = files(root, "kws")
    main = tmp_path / "main.c"
    main.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include "kws_golden.h"
        #include "kws_meta.h"
        int main(void) {
            printf("%d %d %d\\n", KWS_GOLDEN_COUNT, KWS_GOLDEN_INPUT_SIZE == KWS_INPUT_SIZE,
                   KWS_GOLDEN_OUTPUT_SIZE == KWS_OUTPUT_SIZE);
            return kws_golden_input[0][0] == kws_golden_input[0][0] ? 0 : 1;
        }
    """))
    cc = shutil.which("cc") or shutil.which("gcc")
    exe = tmp_path / "main"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main),
                           str(folder / "kws_golden.c"), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.split() == ["3", "1", "1"]


@pytest.mark.parametrize("model", ["kws", "quality"])
def test_cross_compiles_for_cortex_m55_and_sizes_match_the_report(smoke_project, tmp_path, model):
    """arm-none-eabi-gcc (Debian gcc-arm-none-eabi; .ci/run installs it: missing is a failure, not a skip)."""
    import json

    gcc, size, objdump = (shutil.which(f"arm-none-eabi-{t}") for t in ("gcc", "size", "objdump"))
    assert gcc and size and objdump, "arm-none-eabi-gcc/size/objdump are required (apt install gcc-arm-none-eabi)"
    root, _, _ = smoke_project
    _, _, compiled, folder = files(root, model)
    objects = []
    for source in (f"{model}_model.c", f"{model}_golden.c"):
        obj = tmp_path / source.replace(".c", ".o")
        proc = subprocess.run([gcc, "-mcpu=cortex-m55", "-mthumb", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                               f"-I{folder}", "-c", str(folder / source), "-o", str(obj)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        objects.append(obj)
    sections = subprocess.run([size, "-A", str(objects[0])], capture_output=True, text=True, check=True).stdout
    section_size = int(next(line.split()[1] for line in sections.splitlines() if line.startswith(".rodata.npu_model")))
    assert section_size == compiled.stat().st_size
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    flash = next(m["flash_bytes"] for m in report["models"] if m["name"] == model)
    assert flash == -(-section_size // 16) * 16
    headers = subprocess.run([objdump, "-h", str(objects[0])], capture_output=True, text=True, check=True).stdout
    row = next(line.split() for line in headers.splitlines() if ".rodata.npu_model" in line)
    assert row[-1] == "2**4"  # 16-byte aligned section; the array is its only symbol, at offset 0
    symbols = subprocess.run([shutil.which("arm-none-eabi-nm"), str(objects[0])], capture_output=True, text=True,
                             check=True).stdout
    address = next(int(line.split()[0], 16) for line in symbols.splitlines() if line.endswith(f" {model}_model"))
    assert address % 16 == 0


def test_generated_files_are_byte_identical_when_built_again(smoke_project):
    """Delete the target's assets and reports and build again: every file comes back with the same bytes."""
    import hashlib

    from npubuild.pipeline import build

    root, _, _ = smoke_project
    folder = root / "firmware_assets" / TARGET

    def digests():
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}

    build(root, model="all", target=TARGET, profile="smoke", log=lambda s: None)
    before = digests()
    shutil.rmtree(folder)
    summary = build(root, model="all", target=TARGET, profile="smoke", log=lambda s: None)
    assert {r.name.split()[0] for r in summary.results if r.ran} == {"assets", "report"}
    assert digests() == before and len(before) >= 18  # 7 kws + 8 quality files, 3 report files
    text = "".join((folder / name).read_text() for name in before if name.endswith((".h", ".c", ".md", ".json")))
    assert str(root) not in text and not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # no absolute paths, no dates
