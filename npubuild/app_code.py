"""Firmware application code beside the model (issue #17): the KWS front end and detector, the image
preprocessing and head decisions, in portable C99 from templates/.

Python only shapes the data the build used: the front end's tables (`frontend._tables`: periodic Hann
window, the exact float32 mel triangles, the DCT), the standardisation statistics and input
quantization (the literals `assets.write_model_assets` puts in its template context for `<model>_meta.h`),
the detector's numbers (the context's `detector` dict, the one meta.h uses) and the quality heads
(`assets.quality_metadata`). Every file is deterministic: numbers, names and the source model's sha256.

| file                        | made when the context has          | C API prefix            |
|-----------------------------|------------------------------------|-------------------------|
| `<model>_frontend.{c,h}`    | `frontend` (keyword spotting)      | `<model>_frontend_`     |
| `<model>_detector.{c,h}`    | `frontend` and `detector`          | `<model>_detector_`     |
| `<model>_preprocess.{c,h}`  | `quality` (image quality)          | `<model>_preprocess_`   |

`app_sizes` measures what the generated C costs on a Cortex-M55 (arm-none-eabi-gcc -O2, hard float): code
and constants in flash, static buffers in SRAM, as the firmware image (firmware_image.py) links them.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SIZES_SUFFIX = "_app_sizes.json"
# Largest Gaussian radius the image preprocessing supports (a static kernel of 2 * R + 1 floats):
# radius = int(4 * sigma + 0.5) with sigma = (side / output side - 1) / 2, so frames whose centre square
# is up to ~ 32 times the model input side (4096 pixels for 128).
MAX_BLUR_RADIUS = 64
# How the application C is compiled for the Cortex-M55: hard-float ABI (its FPU and MVE; newlib's
# thumb/v8-m.main+dp/hard libraries), and an ISO C mode. The firmware image uses the same flags.
CORTEX_M55_FLAGS = ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-O2", "-std=c99")
# The application parts, in file-name order: `<model>_<part>.c` beside the model (render_app_code)
PARTS = ("detector", "frontend", "preprocess")
# Input sections of one object, as the image's linker script collects them (templates/image.ld.j2)
CODE_SECTIONS = (".text", ".rodata")
DATA_SECTIONS = (".data",)
BSS_SECTIONS = (".bss",)
LINK_ALIGNMENT = 16  # each model's application code, data and buffers start and end 16-byte aligned


def _f(x: float) -> str:
    """A float32 value as a C float literal that parses back to the same bits."""
    return repr(float(np.float32(x))) + "f"


def frontend_tables(fe) -> dict:
    """The front end's tables as C literals: window, FFT twiddles, sparse mel filters, DCT."""
    from npubuild.kinds.kws.frontend import _tables

    window, mel, dct = _tables(fe)
    filters, weights = [], []
    for m in range(fe.mel_bins):
        nonzero = np.flatnonzero(mel[:, m])
        first = int(nonzero[0]) if len(nonzero) else 0
        last = int(nonzero[-1]) if len(nonzero) else -1
        filters.append({"first": first, "count": last - first + 1, "offset": len(weights)})
        weights += [_f(v) for v in mel[first:last + 1, m]]  # zeros inside a triangle are kept: exact sums
    k = np.arange(fe.fft_size // 2)
    angle = 2.0 * np.pi * k / fe.fft_size
    return {"window": [_f(v) for v in window], "mel_filters": filters, "mel_weights": weights,
            "dct": [[_f(v) for v in row] for row in dct],  # [mel_bins][num_mfcc]
            "twiddle_cos": [_f(v) for v in np.cos(angle)], "twiddle_sin": [_f(v) for v in -np.sin(angle)],
            "fft_log2": int(round(math.log2(fe.fft_size)))}


def _check_fft_size(fe) -> None:
    if fe.fft_size < 4 or fe.fft_size & (fe.fft_size - 1) or fe.window_samples > fe.fft_size:
        raise ValueError(f"front end: fft_size must be a power of two >= window_samples, got {fe.fft_size}")


def app_context(context: dict) -> dict:
    """The template context of `write_model_assets`, plus what the application templates need."""
    extra: dict = {"max_blur_radius": MAX_BLUR_RADIUS}
    fe = context.get("frontend")
    if fe is not None:
        _check_fft_size(fe)
        extra["tables"] = frontend_tables(fe)
        extra["input_scale_literal"] = _f(context["input"].scale)
    labels = list(context["labels"])
    extra["keyword_columns"] = [{"index": i, "label": label} for i, label in enumerate(labels)
                                if not label.startswith("_")]  # the rule of listen.Decider
    quality = context.get("quality")
    if quality is not None:
        if quality["input"]["height"] != quality["input"]["width"]:
            raise ValueError("image preprocessing: quality_data.prepare resizes to a square; "
                             f"got {quality['input']['height']} x {quality['input']['width']}")
        extra["input_scale_literal"] = _f(context["input"].scale)
        extra["input_exact"] = quality["input"]["quantization"] == "q = pixel - 128"
        views = [h.get("view", "whole") for h in quality["heads"]]
        extra["detail"] = bool(quality["input"].get("detail_side")) and "detail" in views
        if extra["detail"]:
            extra["quality"] = {**quality, "head_view_indices": [int(v == "detail") for v in views],
                                "detail_head_names": [h["name"] for h in quality["heads"] if h.get("view") == "detail"]}
    return {**context, **extra}


def render_app_code(env, context: dict, out_dir: Path) -> dict[Path, str]:
    """{path: text} of the application C for this model (nothing for a model without a front end
    or image heads)."""
    name = context["name"]
    ctx = app_context(context)
    files = []
    if context.get("frontend") is not None:
        files.append("frontend")
        if context.get("detector") is not None:
            files.append("detector")
    if context.get("quality") is not None:
        files.append("preprocess")
    return {out_dir / f"{name}_{part}.{ext}": env.get_template(f"app_{part}.{ext}.j2").render(ctx)
            for part in files for ext in ("h", "c")}


def app_files(env, context: dict, out_dir: Path) -> dict[Path, str]:
    """The hook of `assets.write_model_assets`: the application C (`render_app_code`) and, beside it,
    `<model>_app_sizes.json` (`app_sizes`: its cost on a Cortex-M55). Nothing for other models."""
    files = render_app_code(env, context, out_dir)
    if not files:
        return {}
    import json

    sizes = app_sizes_of_texts({p.name: text for p, text in files.items()})
    return {**files, out_dir / f"{context['name']}{SIZES_SUFFIX}": json.dumps(sizes, indent=2, sort_keys=True) + "\n"}


# --------------------------------------------------------------------------- sizes on the target


def _tool(name: str) -> str | None:
    return shutil.which(f"arm-none-eabi-{name}")


def app_sizes_of_texts(files: dict[str, str]) -> dict:
    """`app_sizes` of generated files not yet written ({file name: text}; headers beside the sources)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        return app_sizes([Path(tmp) / name for name in sorted(files) if name.endswith(".c")])


def app_sizes(sources: list[Path]) -> dict:
    """What the C files cost on a Cortex-M55 (arm-none-eabi-gcc, CORTEX_M55_FLAGS, each compiled alone),
    as the image links them: each object's code and constants (.text, .rodata), initialised data (.data)
    and zeroed buffers (.bss) placed one after the other at their alignments, objects in file-name order,
    each of the three padded to 16 bytes (`packed_size`). `code_flash_bytes` = code + data (its initial
    values sit in flash), `app_sram_bytes` = data + buffers. Library code (libm's logf, expf) and the
    stack are not included. Without arm-none-eabi-gcc: both None and a `note` saying why."""
    gcc, objdump = _tool("gcc"), _tool("objdump")
    result = {"code_flash_bytes": None, "app_sram_bytes": None, "compiler": " ".join(["arm-none-eabi-gcc",
                                                                                       *CORTEX_M55_FLAGS]),
              "files": {}}
    if not sources:
        return {**result, "code_flash_bytes": 0, "app_sram_bytes": 0}
    if not (gcc and objdump):
        return {**result, "note": "arm-none-eabi-gcc/objdump not found: application code sizes not measured "
                                  "(apt install gcc-arm-none-eabi)"}
    sections: list[tuple[str, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(sources, key=lambda p: p.name):
            obj = Path(tmp) / (source.stem + ".o")
            proc = subprocess.run([gcc, *CORTEX_M55_FLAGS, f"-I{source.parent}", "-c", str(source), "-o", str(obj)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                return {**result, "note": f"{source.name} does not compile for the Cortex-M55: "
                                          f"{proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else ''}"}
            found = object_sections(subprocess.run([objdump, "-h", str(obj)], capture_output=True, text=True,
                                                   check=True).stdout)
            result["files"][source.name] = {
                "text_rodata": sum(size for name, size, _ in found if _matches(name, CODE_SECTIONS)),
                "data": sum(size for name, size, _ in found if _matches(name, DATA_SECTIONS)),
                "bss": sum(size for name, size, _ in found if _matches(name, BSS_SECTIONS))}
            sections += found
    code, data, bss = (packed_size(sections, kinds) for kinds in (CODE_SECTIONS, DATA_SECTIONS, BSS_SECTIONS))
    return {**result, "code_flash_bytes": code + data, "app_sram_bytes": data + bss}


def _matches(name: str, kinds: tuple[str, ...]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in kinds) or (kinds == BSS_SECTIONS and name == "COMMON")


def object_sections(objdump_h: str) -> list[tuple[str, int, int]]:
    """(name, size, alignment) of every section in `objdump -h` output, in file order."""
    out = []
    for line in objdump_h.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0].isdigit() and parts[6].startswith("2**"):
            out.append((parts[1], int(parts[2], 16), 2 ** int(parts[6][3:])))
    return out


def packed_size(sections: list[tuple[str, int, int]], kinds: tuple[str, ...]) -> int:
    """Bytes the linker takes for the sections of `kinds`, in the order given, each at its alignment
    from a 16-byte aligned start, the end padded to 16 (LINK_ALIGNMENT); empty sections take nothing."""
    at = 0
    for name, size, align in sections:
        if size and _matches(name, kinds):
            at = -(-at // align) * align + size
    return -(-at // LINK_ALIGNMENT) * LINK_ALIGNMENT


# --------------------------------------------------------------------------- the memory report


def sizes_path(folder: Path, model: str) -> Path:
    """Where `app_files` writes a model's `<model>_app_sizes.json` (absent: the model has no application C)."""
    return folder / f"{model}{SIZES_SUFFIX}"


def with_app_sizes(figures, path: Path | None):
    """`report.ModelFigures` with the application code's flash and SRAM from `path` (unchanged when
    there is none, or the sizes were not measured)."""
    import json
    from dataclasses import replace

    if path is None or not path.is_file():
        return figures
    sizes = json.loads(path.read_text())
    if sizes.get("code_flash_bytes") is None:
        return figures
    return replace(figures, code_flash_bytes=int(sizes["code_flash_bytes"]), app_sram_bytes=int(sizes["app_sram_bytes"]))
