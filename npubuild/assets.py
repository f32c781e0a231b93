"""Firmware assets from templates: the compiled model as a C array, and its metadata header.

Python only shapes the data (hex rows, sizes, names); the C lives in templates/.
Output is deterministic: it names the source file and its sha256, never a date
or an absolute path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from npubuild.c_text import (  # noqa: F401 (also used through assets)
    _float,
    c_comment,
    c_identifier,
    c_string,
    canonical_text,
    float_literal,
    unique_c_identifiers,
)
from npubuild.config import Recipe, Target
from npubuild.stages import write_text
from npubuild.tflite_file import TENSOR_TYPES, TensorInfo, io_tensors, output_order  # noqa: F401 (used by deploy)

ALIGNMENT = 16
BYTES_PER_ROW = 16


_CELLS = np.array([f"0x{b:02x}, ".encode() for b in range(256)], dtype="S6")


def hex_rows(data: bytes, per_row: int = BYTES_PER_ROW) -> str:
    """C initialiser rows, `per_row` bytes each, e.g. "    0x1c, 0x00, ...", rows joined by ",\n".

    Built as one byte matrix with numpy (a 4 MB model in well under a second)."""
    if not data:
        return ""
    values = np.frombuffer(data, np.uint8)
    full = len(values) // per_row
    parts = []
    if full:
        cells = np.frombuffer(_CELLS[values[:full * per_row]].tobytes(), np.uint8).reshape(full, per_row * 6)
        rows = np.empty((full, 4 + per_row * 6), np.uint8)
        rows[:, :4] = ord(" ")
        rows[:, 4:] = cells
        rows[:, -1] = ord("\n")  # "0x.., " -> "0x..,\n" at the end of each row
        parts.append(rows.tobytes().decode("ascii"))
    rest = values[full * per_row:]
    if len(rest):
        parts.append("    " + _CELLS[rest].tobytes().decode("ascii"))
    text = "".join(parts)
    return text[:-2]  # no separator after the last byte


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("npubuild", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )
    env.filters["c_string"] = c_string
    env.filters["c_identifier"] = c_identifier
    env.filters["c_comment"] = c_comment
    return env


def padded_size(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


def placement(target: Target, scratch_bytes: int, fast_scratch_bytes: int, compiled_bytes: int) -> dict[str, int]:
    """Where a compiled model's memory goes on `target`, in bytes: its arena (in SRAM or DRAM, as the
    memory mode says), the NPU fast scratch (Dedicated_Sram modes), the model array in flash (and in
    DRAM when the NPU reads weights from there)."""
    arena = arena_size(scratch_bytes, target)
    fast = padded_size(fast_scratch_bytes) if target.fast_memory else 0
    flash = padded_size(compiled_bytes)
    return {"arena_bytes": arena, "fast_scratch_bytes": fast, "flash_bytes": flash,
            "sram_bytes": arena if target.arena_memory == "sram" else fast,
            "dram_bytes": (arena if target.arena_memory == "dram" else 0)
            + (flash if target.model_memory == "dram" else 0)}


def arena_size(scratch_bytes: int, target: Target) -> int:
    """TFLM tensor arena: Vela's scratch tensor (feature maps, input, output) + TFLM's own overhead."""
    return padded_size(scratch_bytes + target.tflm_overhead_bytes)


def write_model_assets(*, recipe: Recipe, target: Target, technique: str, compiled: Path, int8: Path,
                       features: Path | None, scratch_bytes: int, fast_scratch_bytes: int, out_dir: Path,
                       golden: dict | None = None, extras: tuple[dict, dict[str, str]] = ({}, {}),
                       provenance: dict[str, str] | None = None,
                       notes: tuple[str, ...] = ()) -> list[Path]:
    """`golden` defaults to vectors from the dataset's test split (see `invoke deploy` for models
    that come without one). `extras`: what the model's kind adds (`ModelKind.asset_extras`: template
    context, and {suffix: text} of files of its own).
    `provenance`: the build profile and dataset that made the model (named in the header). `notes`:
    lines for the end of integration.md (e.g. why there are no golden vectors)."""
    env = _environment()
    name = recipe.name
    data = compiled.read_bytes()
    input_info, outputs = io_tensors(int8)
    context = {
        "name": name, "guard": c_identifier(name).upper(), "symbol": f"{c_identifier(name)}_model",
        "target": target, "technique": technique, "alignment": ALIGNMENT,
        "source_name": compiled.name, "sha256": hashlib.sha256(data).hexdigest(),
        "section": target.model_section, "length": len(data),
        "labels": list(recipe.labels), "input": input_info, "output": outputs[0], "outputs": outputs,
        "arena_size": arena_size(scratch_bytes, target), "scratch": scratch_bytes,
        "fast_memory_size": padded_size(fast_scratch_bytes) if target.fast_memory else 0,
        "frontend": None, "quality": None, "golden": None, "detector": None, "provenance": provenance,
        "notes": list(notes),
    }
    paths = {}
    context.update(extras[0])
    for suffix, text in extras[1].items():
        paths[out_dir / f"{name}{suffix}"] = text
    from npubuild import golden_vectors, op_resolver

    entries = op_resolver.resolver_entries(compiled)
    context.update(symbol_base=c_identifier(name), entries=entries,
                   cpu_ops=[e["op"].split()[0] for e in entries if e["method"] != "AddEthosU"])
    if golden is None and features is not None:
        golden = golden_vectors.golden_vectors(recipe, int8, features)
    if golden is not None:
        # element types from the tensors: int8_t, or int16_t for 16x8 models (int16 activations)
        context.update(golden=golden, golden_input_type=f"{input_info.dtype}_t",
                       golden_output_type=f"{outputs[0].dtype}_t",
                       golden_input_rows=[golden_vectors.c_rows(r) for r in golden["inputs"]],
                       golden_output_rows=[golden_vectors.c_rows(r) for r in golden["outputs"]])
        paths[out_dir / f"{name}_golden.h"] = env.get_template("golden.h.j2").render(context)
        paths[out_dir / f"{name}_golden.c"] = env.get_template("golden.c.j2").render(context)
    from npubuild import app_code  # issue #17: front end, preprocessing in C, and their Cortex-M55 sizes

    paths.update(app_code.app_files(env, context, out_dir))
    paths.update({
        out_dir / f"{name}_ops.h": env.get_template("ops.h.j2").render(context),
        out_dir / "integration.md": env.get_template("integration.md.j2").render(context),
        out_dir / f"{name}_model.h": env.get_template("model.h.j2").render(context),
        out_dir / f"{name}_model.c": env.get_template("model.c.j2").render(context, hex_rows=hex_rows(data)),
        out_dir / f"{name}_meta.h": env.get_template("meta.h.j2").render(context),
    })
    for path, text in paths.items():
        write_text(path, text)
    return list(paths)
