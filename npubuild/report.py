"""Memory report per target: what each model needs in SRAM and flash, against the budget.

Pure functions over plain records; written as JSON (for CI) and Markdown (for people).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import Target
from .errors import BuildError


@dataclass(frozen=True)
class ModelFigures:
    """One model compiled for one target: everything the report says about it."""

    name: str
    technique: str
    sram_bytes: int  # arena: Vela's SRAM figure + TFLM overhead, 16-byte aligned
    flash_bytes: int  # what sits in flash: the compiled model array, padded to its alignment
    vela_sram_bytes: int
    vela_flash_bytes: int  # Vela's weights + command stream figure
    arena_bytes: int
    npu_ops: int
    cpu_ops: int
    cpu_op_names: list[str]
    cycles: int
    inference_ms: float
    macs: int
    tflite_bytes: int
    accuracy: dict[str, float]
    per_class_int8: dict[str, float | None] = field(default_factory=dict)
    confusion_int8: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _headroom(used: int, budget: int) -> dict:
    return {"used_bytes": used, "budget_bytes": budget, "headroom_bytes": budget - used,
            "headroom_percent": round(100.0 * (budget - used) / budget, 2)}


def build_report(target: Target, models: list[ModelFigures]) -> dict:
    sram = sum(m.sram_bytes for m in models)  # models may run concurrently: arenas are summed
    flash = sum(m.flash_bytes for m in models)
    fits = sram <= target.sram_budget_bytes and flash <= target.flash_budget_bytes
    return {
        "target": {"name": target.name, "description": target.description,
                   "accelerator": target.accelerator, "system_config": target.system_config,
                   "memory_mode": target.memory_mode, "sram_budget_bytes": target.sram_budget_bytes,
                   "flash_budget_bytes": target.flash_budget_bytes,
                   "tflm_overhead_bytes": target.tflm_overhead_bytes},
        "models": [{k: v for k, v in asdict(m).items() if k not in ("confusion_int8", "labels")}
                   for m in models],
        "total": {"sram_bytes": sram, "flash_bytes": flash, "fits": fits,
                  "sram": _headroom(sram, target.sram_budget_bytes),
                  "flash": _headroom(flash, target.flash_budget_bytes)},
    }


def over_budget(report: dict) -> list[str]:
    """One line per exceeded budget, naming the models, the memory and the bytes over."""
    problems = []
    for memory, key in (("SRAM", "sram"), ("flash", "flash")):
        t = report["total"][key]
        if t["headroom_bytes"] < 0:
            names = ", ".join(f"{m['name']} ({m[key + '_bytes']} bytes)" for m in report["models"])
            problems.append(f"target {report['target']['name']}: {memory} over budget by "
                            f"{-t['headroom_bytes']} bytes ({t['used_bytes']} used of {t['budget_bytes']}: {names})")
    return problems


def check_budget(report: dict) -> None:
    problems = over_budget(report)
    if problems:
        raise BuildError("; ".join(problems))


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def render_markdown(report: dict, models: list[ModelFigures]) -> str:
    t = report["target"]
    total = report["total"]
    lines = [
        f"# Memory report: {t['name']}",
        "",
        f"{t['description']}. Accelerator `{t['accelerator']}`, Vela system config "
        f"`{t['system_config']}`, memory mode `{t['memory_mode']}`.",
        "",
        "| model | technique | SRAM (arena) KiB | flash KiB | Vela SRAM KiB | Vela flash KiB | NPU ops | CPU ops "
        "| MACs | cycles | inference ms | TFLite bytes | FP32 acc | INT8 acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        lines.append(
            f"| {m.name} | {m.technique} | {_kib(m.sram_bytes)} | {_kib(m.flash_bytes)} | "
            f"{_kib(m.vela_sram_bytes)} | {_kib(m.vela_flash_bytes)} | {m.npu_ops} | {m.cpu_ops} | "
            f"{m.macs:,} | {m.cycles:,} | {m.inference_ms:.3f} | {m.tflite_bytes:,} | "
            f"{m.accuracy['fp32']:.4f} | {m.accuracy['int8']:.4f} |")
    lines += [
        "",
        "| memory | used KiB | budget KiB | headroom KiB | headroom % |",
        "|---|---:|---:|---:|---:|",
    ]
    for memory, key in (("SRAM", "sram"), ("flash", "flash")):
        h = total[key]
        lines.append(f"| {memory} | {_kib(h['used_bytes'])} | {_kib(h['budget_bytes'])} | "
                     f"{_kib(h['headroom_bytes'])} | {h['headroom_percent']:.1f} |")
    lines += ["", f"**Fits: {'yes' if total['fits'] else 'NO'}**", ""]
    for problem in over_budget(report):
        lines += [f"- {problem}", ""]
    lines += [
        "SRAM per model is its tensor arena (Vela's SRAM figure plus the TFLM overhead allowance); "
        "arenas are summed, as if the models may run at the same time. Flash per model is the compiled "
        "model array as it sits in flash, padded to its 16-byte alignment; Vela's weights and command "
        "stream figure is beside it.",
        "",
    ]
    for m in models:
        if m.cpu_op_names:
            lines += [f"Operators of {m.name} left on the CPU: {', '.join(m.cpu_op_names)}.", ""]
        if m.confusion_int8:
            lines += [f"## {m.name}: INT8 confusion matrix on the test split (rows: true, columns: predicted)", ""]
            lines.append("| true \\ predicted | " + " | ".join(m.labels) + " | accuracy |")
            lines.append("|---" * (len(m.labels) + 2) + "|")
            for label, row in zip(m.labels, m.confusion_int8, strict=True):
                acc = m.per_class_int8.get(label)
                lines.append(f"| {label} | " + " | ".join(str(v) for v in row)
                             + f" | {'-' if acc is None else f'{acc:.3f}'} |")
            lines.append("")
    return "\n".join(lines)
