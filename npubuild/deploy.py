"""Bring your own model: any full-INT8 (or 16x8) TFLite file -> Vela -> firmware assets and a memory report.

No training, no dataset. The file is checked first, each problem one line:
not a TFLite flatbuffer; float or dynamic-range quantized (Vela and the NPU need
full INT8: int8 weights, activations, input and output; or 16x8: int8 weights,
int16 activations, input and output). A file Vela already compiled (it holds the
`ethos-u` custom operator) is packaged as it is, whichever Vela version named its
tensors (they are found by their place among the operator's inputs).

Golden vectors come from seeded random inputs run through the quantized file on
the host (LiteRT's reference kernels, `int8_runner`), so an on-target test can
still check the whole chain. A file LiteRT refuses to load (TFLM's person-detection
model: per-channel quantization LiteRT rejects and TFLM ignores) gets them from
TFLM's interpreter; a file neither runs gets none, said in one line and in
integration.md. There are none for a file compiled elsewhere (the host cannot
run its NPU operator).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError

INT8_HOWTO = ("convert with converter.optimizations = [tf.lite.Optimize.DEFAULT], a representative_dataset, "
              "target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] and "
              "inference_input_type = inference_output_type = tf.int8")



@dataclass(frozen=True)
class Inspection:
    compiled: bool  # already through Vela
    input_type: str
    output_types: tuple[str, ...]
    float_tensors: int  # float tensors anywhere in the graph (0 for a full-INT8 model)


def inspect_tflite(path: Path) -> Inspection:
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise BuildError(f"{path}: file not found")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise BuildError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    from ethosu.vela.tflite.Model import Model

    from npubuild.assets import TENSOR_TYPES as _TYPES

    try:
        model = Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        types = [graph.Tensors(i).Type() for i in range(graph.TensorsLength())]
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        compiled = any((c.CustomCode() or b"") == b"ethos-u" for c in codes)
        in_type = _TYPES.get(types[graph.Inputs(0)], "other")
        out_types = tuple(_TYPES.get(types[graph.Outputs(i)], "other") for i in range(graph.OutputsLength()))
    except Exception as e:  # a damaged flatbuffer fails anywhere in the reader
        raise BuildError(f"{path}: not a readable TFLite model ({e.__class__.__name__})") from None
    return Inspection(compiled, in_type, out_types, sum(t in (0, 1, 10) for t in types))


def check_full_int8(path: Path, info: Inspection) -> None:
    """Full INT8, or 16x8 (int16 activations, input and output; int8 weights): what the NPU runs."""
    if info.compiled:
        return
    types = {info.input_type, *info.output_types}
    if not info.float_tensors and types in ({"int8"}, {"int16"}):
        return
    if info.float_tensors or types & {"float32", "float16", "float64"}:
        kind = "a float model" if info.input_type.startswith("float") and info.float_tensors > 2 \
            else "not fully INT8 (dynamic-range or float input/output)"
    else:
        kind = f"{info.input_type} input, {'/'.join(info.output_types)} output"
    raise BuildError(f"{path}: {kind}: the Ethos-U NPU needs full INT8 (int8 weights, activations, input and "
                     f"output) or 16x8 (int8 weights, int16 activations, input and output); {INT8_HOWTO}")


def host_golden(int8: Path, io_in, log: Callable[[str], None], name: str) -> tuple[dict | None, tuple[str, ...]]:
    """Golden vectors from LiteRT's reference kernels; from TFLM's interpreter when LiteRT cannot load
    or run the file; else none, said in one line. Returns (golden, notes for integration.md)."""
    from npubuild import golden_vectors
    from npubuild.int8_runner import run_tflm

    try:
        golden = golden_vectors.random_golden(int8, io_in)
        if io_in.dtype == "int16":
            golden["host"] = "LiteRT reference kernels; TFLM's 16-bit kernels can round one step apart"
        return golden, ()
    except BuildError as e:
        litert = str(e).removeprefix(f"{int8}: ")
    try:
        golden = golden_vectors.random_golden(int8, io_in, run=run_tflm)
    except BuildError as e:
        reason = f"{litert}; {str(e).removeprefix(f'{int8}: ')}"
        log(f"[deploy {name}] no golden vectors: {reason}")
        return None, (f"No golden vectors: the host could not run the model ({reason}).",)
    golden["host"] = f"TFLM's interpreter, tflite_micro: {litert}"
    log(f"[deploy {name}] golden vectors from TFLM's interpreter: {litert}")
    return golden, ()


@dataclass(frozen=True)
class DeployRecipe:
    """What the asset writer needs of a model that has no recipe."""

    name: str
    labels: tuple[str, ...]
    task: str = "deployed"
    frontend: None = None
    image: None = None


def deploy(root: Path, *, tflite: Path, target: str, name: str | None = None, assets_dir: Path | None = None,
           build_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    from npubuild import assets, report, stages, vela
    from npubuild.config import resolve_targets
    from npubuild.pipeline import Layout, _check_writable

    layout = Layout.for_project(root, build_dir, assets_dir)
    info = inspect_tflite(tflite)
    check_full_int8(tflite, info)
    name = name or tflite.stem
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise BuildError(f"{tflite}: --name {name!r} cannot name a folder")
    targets = resolve_targets(layout.root, target)
    _check_writable(layout.assets_dir)
    digest = hashlib.sha256(tflite.read_bytes()).hexdigest()[:12]
    work = layout.build_dir / "deploy" / name / digest
    int8 = work / f"{name}_input.tflite"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tflite, int8)
    reports = {}
    golden, notes = (None, ()) if info.compiled else host_golden(int8, assets.io_tensors(int8)[0], log, name)
    with stages.BuildLock(layout.build_dir):
        for tgt in targets:
            out = vela.VelaOutputs(work / "vela" / tgt.name, name)
            if info.compiled:
                compiled = int8
                log(f"[deploy {name}] {tflite.name} is already compiled by Vela: packaged as it is")
                figures = {"npu_ops": 1, "cpu_ops": 0, "cpu_op_names": [], "cycles": 0, "inference_ms": 0.0,
                           "macs": 0, "sram_bytes": 0, **vela.compiled_layout(compiled)}
                figures["top_cycles"] = figures["top_staging"] = []
            else:
                log(f"[deploy {name}] Vela for {tgt.name}")
                vela.compile_with_vela(int8, tgt, out)
                compiled = out.tflite
                figures = vela.read_vela_figures(out)
            io_in, io_out = assets.io_tensors(compiled)
            labels = tuple(f"output_{i}" for i in range(max(1, int(np.prod(io_out[0].shape)))))
            recipe = DeployRecipe(name, labels)
            folder = layout.assets_dir / tgt.name / name
            assets.write_model_assets(recipe=recipe, target=tgt, technique="deployed", compiled=compiled,
                                      int8=compiled, features=None, scratch_bytes=figures["scratch_bytes"],
                                      fast_scratch_bytes=figures["fast_scratch_bytes"], out_dir=folder,
                                      golden=golden, notes=notes)
            model = report.ModelFigures(
                name=name, technique="deployed", vela_sram_bytes=figures["sram_bytes"],
                vela_flash_bytes=figures["read_only_bytes"] + figures["command_stream_bytes"],
                **assets.placement(tgt, figures["scratch_bytes"], figures["fast_scratch_bytes"],
                                   compiled.stat().st_size),
                io_bytes=sum(t.size * (np.dtype(t.dtype).itemsize if t.dtype != "other" else 1)
                             for t in (io_in, *io_out)),
                npu_ops=figures["npu_ops"],
                cpu_ops=figures["cpu_ops"], cpu_op_names=figures["cpu_op_names"], cycles=figures["cycles"],
                inference_ms=figures["inference_ms"], macs=figures["macs"], tflite_bytes=tflite.stat().st_size,
                accuracy={"fp32": None, "int8": None}, top_cycles=figures["top_cycles"],
                top_staging=figures["top_staging"], profile="deployed", dataset=f"none ({tflite.name})")
            # beside the assets, as a build writes it: the target's memory report counts this model too
            stages.write_json(folder / f"{name}_figures.json", asdict(model))
            rep = report.build_report(tgt, [model])
            stages.write_json(folder / "memory_report.json", rep)
            stages.write_text(folder / "memory_report.md", report.render_markdown(rep, [model]))
            reports[tgt.name] = rep
            log(f"[deploy {name}] {tgt.name}: SRAM {model.sram_bytes / 1024:.1f} KiB, flash "
                f"{model.flash_bytes / 1024:.1f} KiB, {model.inference_ms:.3f} ms -> {folder}")
    for rep in reports.values():
        report.check_budget(rep)
    return json.loads(json.dumps(reports))
