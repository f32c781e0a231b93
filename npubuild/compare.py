"""`invoke compare`: every recipe of the deployment tree side by side, measured in what ships.

Per recipe: FP32 and INT8 accuracy, TFLite bytes and zipped bytes (deflate, as
in the TFMOT tutorials), sparsity and distinct weight values measured in the
INT8 file, and per target Vela's SRAM, flash, cycles and inference time, each
with its change against the `ptq` baseline.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

BASELINE = "ptq"


def zipped_size(path: Path) -> int:
    """Bytes of a zip archive holding the file, deflate-compressed (the TFMOT tutorials' measure)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, path.read_bytes())
    return len(buffer.getvalue())


def _change(value: float, base: float) -> float | None:
    return round(100.0 * (value - base) / base, 2) if base else None


def compare_rows(records: list[dict]) -> dict:
    """`records`: one per recipe with name, steps, accuracy, tflite/zipped bytes, weights summary and
    per-target Vela figures. Adds the change against the baseline recipe."""
    by_name = {r["recipe"]: r for r in records}
    base = by_name.get(BASELINE)
    for r in records:
        r["zip_reduction_percent"] = round(100.0 * (1 - r["zipped_bytes"] / r["tflite_bytes"]), 2)
        if base is None:
            continue
        r["int8_accuracy_change_points"] = round(100.0 * (r["accuracy"]["int8"] - base["accuracy"]["int8"]), 2)
        for tname, v in r["targets"].items():
            b = base["targets"].get(tname)
            if b:
                # weights in DRAM (e.g. U65 Dedicated_Sram): no flash in Vela's figures; compare the model itself
                key = "flash_bytes" if b["flash_bytes"] else "model_bytes"
                if b.get(key):
                    v["flash_ratio"] = round(v[key] / b[key], 4)
                v["change_percent"] = {k: _change(v[k], b[k])
                                       for k in ("sram_bytes", "flash_bytes", "cycles", "inference_ms")}
    return {"baseline": BASELINE, "recipes": records}


def render_markdown(model: str, result: dict, shipped: str, metric_note: str = "Accuracy is top-1") -> str:
    records = result["recipes"]
    lines = [
        f"# Collaborative optimization: {model}",
        "",
        f"Every recipe of the deployment tree, measured in its INT8 TFLite file. The build ships `{shipped}`.",
        f"{metric_note} on the held-out test split (FP32 of QAT recipes: the fake-quantized Keras model).",
        "Zipped: the INT8 file deflate-compressed in a zip archive. Sparsity: share of exactly-zero weights in the",
        "layers tfmot prunes (Conv2D, Dense; DepthwiseConv2D is never pruned or clustered by tfmot 0.8.1).",
        "",
        "| recipe | steps | FP32 acc | INT8 acc | INT8 vs ptq (points) | TFLite bytes -> zipped (reduction) "
        "| sparsity | max values / channel | max values / tensor |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        w = r["weights"]
        lines.append(
            f"| {r['recipe']} | {' -> '.join(r['steps']) or '-'} | {100 * r['accuracy']['fp32']:.2f}% | "
            f"{100 * r['accuracy']['int8']:.2f}% | {r.get('int8_accuracy_change_points', 0.0):+.2f} | "
            f"{r['tflite_bytes']:,} -> {r['zipped_bytes']:,} ({r['zip_reduction_percent']:.1f}%) | "
            f"{w['sparsity_prunable']:.3f} | {w['max_values_per_channel']} | {w['max_values_per_tensor']} |")
    targets = sorted({t for r in records for t in r["targets"]})
    for tname in targets:
        lines += ["", f"## Vela on {tname}", "",
                  "| recipe | SRAM KiB | flash KiB | flash vs ptq | cycles | inference ms | NPU / CPU ops |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in records:
            v = r["targets"].get(tname)
            if not v:
                continue
            ratio = f"{v['flash_ratio']:.3f}x" if "flash_ratio" in v else "-"
            lines.append(f"| {r['recipe']} | {v['sram_bytes'] / 1024:.1f} | {v['flash_bytes'] / 1024:.1f} | {ratio} | "
                         f"{v['cycles']:,} | {v['inference_ms']:.3f} | {v['npu_ops']} / {v['cpu_ops']} |")
    return "\n".join(lines) + "\n"
