"""Firmware assets from templates: the compiled model as a C array, and its metadata header.

Python only shapes the data (hex rows, sizes, names); the C lives in templates/.
Output is deterministic: it names the source file and its sha256, never a date
or an absolute path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Recipe, Target
from .stages import write_text

ALIGNMENT = 16
BYTES_PER_ROW = 16


C_KEYWORDS = frozenset((
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local "
    "bool true false alignas alignof static_assert thread_local nullptr typeof").split())


def c_identifier(name: str) -> str:
    """A valid, unreserved C identifier from any name: other characters become '_'; a leading
    digit or underscore (reserved at file scope) gets an 'm' in front; a keyword gets a '_' after."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not ident or ident[0].isdigit() or ident[0] == "_":
        ident = "m" + ident
    return ident + "_" if ident in C_KEYWORDS else ident


def unique_c_identifiers(names: list[str]) -> list[str]:
    """c_identifier of each name, made unique even when upper-cased (macro names): names that
    collide get a suffix from a hash of the original name (stable across builds)."""
    import hashlib

    base = [c_identifier(n) for n in names]
    counts: dict[str, int] = {}
    for b in base:
        counts[b.upper()] = counts.get(b.upper(), 0) + 1
    out = [b if counts[b.upper()] == 1 else f"{b}_{hashlib.sha256(n.encode()).hexdigest()[:8]}"
           for b, n in zip(base, names, strict=True)]
    if len({o.upper() for o in out}) != len(out):  # only with identical names, which recipes reject
        raise ValueError(f"names do not give unique C identifiers: {names}")
    return out


def c_comment(text: str) -> str:
    """Text safe inside a /* */ comment."""
    return text.replace("*/", "* /").replace("/*", "/ *")


def c_string(text: str) -> str:
    """A C string literal for any text (non-ASCII as UTF-8 octal escapes)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F and ch != "?":  # '?' escaped: no trigraphs
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


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


def quantize_int8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float values -> int8 with a tensor's quantization, as firmware feeds the model: round to
    nearest (half to even), add the zero point, saturate."""
    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


# TFLite TensorType codes (schema.fbs)
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8", 10: "float64"}


def io_tensors(tflite_path: Path) -> tuple[TensorInfo, list[TensorInfo]]:
    """Input tensor and output tensors (in the file's output order), read from the flatbuffer itself:
    works for Vela-compiled files too, which LiteRT cannot load (no host kernel for the Ethos-U operator)."""
    from ethosu.vela.tflite.Model import Model

    graph = Model.GetRootAsModel(tflite_path.read_bytes(), 0).Subgraphs(0)

    def info(index: int) -> TensorInfo:
        t = graph.Tensors(index)
        q = t.Quantization()
        scale = float(np.float32(q.Scale(0))) if q is not None and q.ScaleLength() else 0.0
        zero = int(q.ZeroPoint(0)) if q is not None and q.ZeroPointLength() else 0
        return TensorInfo(tuple(int(t.Shape(i)) for i in range(t.ShapeLength())),
                          TENSOR_TYPES.get(t.Type(), "other"), scale, zero)

    return info(graph.Inputs(0)), [info(graph.Outputs(i)) for i in range(graph.OutputsLength())]


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


def _float(x: float) -> str:
    return repr(float(np.float32(x)))


def quality_metadata(recipe: Recipe, int8: Path, evaluation: dict) -> dict:
    """What the predictor and the firmware header both use: input policy, heads, thresholds."""
    from .convert import output_order

    input_info, outputs = io_tensors(int8)
    order = output_order(int8)
    heads = []
    for i, head in enumerate(recipe.heads):
        out = outputs[order[i]]
        heads.append({"name": head, "output_index": order[i], "scale": out.scale, "zero_point": out.zero_point,
                      "threshold": evaluation["thresholds"]["int8"][head],
                      "threshold_q": evaluation["threshold_q"][head]})
    exact = input_info.scale == 1.0 / 128.0 and input_info.zero_point == 0
    return {
        "model": recipe.name, "heads": heads,
        "input": {"height": recipe.image.height, "width": recipe.image.width, "channels": 3, "layout": "HWC RGB",
                  "scale": input_info.scale, "zero_point": input_info.zero_point,
                  "normalisation": "x = (pixel - 128) / 128",
                  "quantization": "q = pixel - 128" if exact else "q = round(x / scale) + zero_point",
                  "resize": "centre square crop, then resize to height x width (area averaging when shrinking)"},
    }


def write_model_assets(*, recipe: Recipe, target: Target, technique: str, compiled: Path, int8: Path,
                       features: Path | None, scratch_bytes: int, fast_scratch_bytes: int, out_dir: Path,
                       evaluation: dict | None = None, golden: dict | None = None) -> list[Path]:
    """`golden` defaults to vectors from the dataset's test split (see `invoke deploy` for models
    that come without one)."""
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
        "frontend": None, "quality": None, "golden": None, "detector": None,
    }
    if getattr(recipe, "detector", None) is not None:  # `invoke deploy`'s models have no recipe
        from .listen import threshold_q

        context["detector"] = {**vars(recipe.detector), "threshold_literal": _float(recipe.detector.threshold) + "f",
                               "threshold_q": threshold_q(recipe.detector, outputs[0].scale, outputs[0].zero_point)}
    paths = {}
    if recipe.task == "keyword_spotting" and features is not None:
        from .frontend import LOG_FLOOR

        with np.load(features) as d:
            context.update(frontend=recipe.frontend, log_floor=repr(float(LOG_FLOOR)),
                           mfcc_mean=[_float(v) + "f" for v in d["mean"]],
                           mfcc_std=[_float(v) + "f" for v in d["std"]])
    if recipe.task == "image_quality":
        meta = quality_metadata(recipe, int8, evaluation)
        head_macros = unique_c_identifiers([h["name"] for h in meta["heads"]])
        context["quality"] = {**meta, "head_macros": [m.upper() for m in head_macros],
                              "threshold_literals": [_float(h["threshold"]) + "f" for h in meta["heads"]],
                              "scale_literals": [_float(h["scale"]) + "f" for h in meta["heads"]]}
        paths[out_dir / f"{name}_meta.json"] = canonical_text(meta)
    from . import firmware_kit

    entries = firmware_kit.resolver_entries(compiled)
    context.update(symbol_base=c_identifier(name), entries=entries,
                   cpu_ops=[e["op"].split()[0] for e in entries if e["method"] != "AddEthosU"])
    if golden is None and features is not None:
        golden = firmware_kit.golden_vectors(recipe, int8, features)
    if golden is not None:
        context.update(golden=golden,
                       golden_input_rows=[firmware_kit.c_rows(r) for r in golden["inputs"]],
                       golden_output_rows=[firmware_kit.c_rows(r) for r in golden["outputs"]])
        paths[out_dir / f"{name}_golden.h"] = env.get_template("golden.h.j2").render(context)
        paths[out_dir / f"{name}_golden.c"] = env.get_template("golden.c.j2").render(context)
    from . import app_code  # issue #17: front end, detector, preprocessing in C, and their Cortex-M55 sizes

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


def canonical_text(data: dict) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"
