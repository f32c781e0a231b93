"""Memory report per target: what each model needs in SRAM and flash, against the budget.

Pure functions over plain records; written as JSON (for CI) and Markdown (for people).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from npubuild.config import Target
from npubuild.errors import BuildError, OverBudget
from npubuild.report_text import fraction, kib, short_layer


@dataclass(frozen=True)
class ModelFigures:
    """One model compiled for one target: everything the report says about it."""

    name: str
    technique: str
    sram_bytes: int  # what the model needs in SRAM: its arena, or (Dedicated_Sram) the NPU fast scratch
    flash_bytes: int  # what sits in flash: the compiled model array, padded to its alignment
    vela_sram_bytes: int
    vela_flash_bytes: int  # Vela's own figure for weights and command stream
    arena_bytes: int  # TFLM tensor arena: Vela's scratch tensor + TFLM overhead, 16-byte aligned
    npu_ops: int
    cpu_ops: int
    cpu_op_names: list[str]
    cycles: int
    inference_ms: float
    macs: int
    tflite_bytes: int
    accuracy: dict[str, float]
    fast_scratch_bytes: int = 0  # separate NPU scratch in SRAM (Dedicated_Sram modes), 16-byte aligned
    dram_bytes: int = 0  # arena and/or weights in DRAM, where the memory mode puts them there
    io_bytes: int = 0  # input + output tensor bytes
    top_cycles: list[dict] = field(default_factory=list)
    top_staging: list[dict] = field(default_factory=list)
    per_class_int8: dict[str, float | None] = field(default_factory=dict)
    confusion_int8: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    per_head: dict[str, dict] = field(default_factory=dict)  # image quality: INT8 metrics per head
    profile: str = ""  # the build profile that made the model
    dataset: str = ""  # the data it was trained on ("builtin", or a folder's name and id)
    code_flash_bytes: int = 0  # application C beside the model (front end, detector, preprocessing): flash
    app_sram_bytes: int = 0  # its static buffers and state: SRAM


def _headroom(used: int, budget: int) -> dict:
    return {"used_bytes": used, "budget_bytes": budget, "headroom_bytes": budget - used,
            "headroom_percent": round(100.0 * (budget - used) / budget, 2) if budget else 0.0}


def memory_use(target: Target, models: list[ModelFigures]) -> dict[str, list[dict]]:
    """What each memory of the target holds for the models: a list of named parts with bytes.

    Arenas (and NPU fast scratch) are shared, the largest one sized, when the target runs
    the models one at a time; the models' inputs and outputs then need buffers of their
    own outside the shared arena (another model overwrites it). When the models may run
    concurrently every model has its own arena, with its I/O inside it.
    """
    use: dict[str, list[dict]] = {kind: [] for kind in target.memory}
    shared = target.models_run == "one_at_a_time" and len(models) > 1
    names = ", ".join(m.name for m in models)
    if shared:
        largest = max(models, key=lambda m: m.arena_bytes)
        use[target.arena_memory].append({"part": f"arena shared by {names} (largest: {largest.name})",
                                         "models": [m.name for m in models], "bytes": largest.arena_bytes})
        if target.fast_memory:
            largest = max(models, key=lambda m: m.fast_scratch_bytes)
            use["sram"].append({"part": f"NPU fast scratch shared by {names}", "models": [m.name for m in models],
                                "bytes": largest.fast_scratch_bytes})
        for m in models:
            use["sram"].append({"part": f"{m.name} input/output buffers", "models": [m.name],
                                "bytes": m.io_bytes})
    else:
        for m in models:
            use[target.arena_memory].append({"part": f"{m.name} arena", "models": [m.name], "bytes": m.arena_bytes})
            if target.fast_memory:
                use["sram"].append({"part": f"{m.name} NPU fast scratch", "models": [m.name],
                                    "bytes": m.fast_scratch_bytes})
    for m in models:
        use["flash"].append({"part": f"{m.name} model array", "models": [m.name], "bytes": m.flash_bytes})
        if target.model_memory == "dram":
            use["dram"].append({"part": f"{m.name} model (weights read by the NPU)", "models": [m.name],
                                "bytes": m.flash_bytes})
    for m in models:  # the application C beside each model (app_code; zero when not measured)
        if m.code_flash_bytes:
            use["flash"].append({"part": f"{m.name} application code", "models": [m.name],
                                 "bytes": m.code_flash_bytes})
        if m.app_sram_bytes:
            use["sram"].append({"part": f"{m.name} application buffers", "models": [m.name],
                                "bytes": m.app_sram_bytes})
    return use


def build_report(target: Target, models: list[ModelFigures]) -> dict:
    use = memory_use(target, models)
    totals = {kind: sum(p["bytes"] for p in parts) for kind, parts in use.items()}
    memories = {kind: {"region": target.memory[kind].region, "size_bytes": target.memory[kind].bytes,
                       "ml_share": target.memory[kind].ml_share, **_headroom(totals[kind], target.budget(kind)),
                       "parts": use[kind]}
                for kind in target.memory}
    fits = all(m["headroom_bytes"] >= 0 for m in memories.values())
    return {
        "target": {"name": target.name, "description": target.description,
                   "accelerator": target.accelerator, "system_config": target.system_config,
                   "memory_mode": target.memory_mode, "sram_budget_bytes": target.sram_budget_bytes,
                   "flash_budget_bytes": target.flash_budget_bytes, "dram_budget_bytes": target.budget("dram"),
                   "tflm_overhead_bytes": target.tflm_overhead_bytes, "models_run": target.models_run,
                   "arena_memory": target.arena_memory, "model_memory": target.model_memory,
                   "npu_clock_hz": target.npu_clock_hz},
        "models": [{k: v for k, v in asdict(m).items() if k not in ("confusion_int8", "labels")
                    and not (k == "per_head" and not v)} for m in models],
        "total": {"sram_bytes": totals["sram"], "flash_bytes": totals["flash"], "dram_bytes": totals.get("dram", 0),
                  "fits": fits, **memories},
    }


MEMORY_NAMES = {"sram": "SRAM", "dram": "DRAM", "flash": "flash"}


def over_budget(report: dict) -> list[str]:
    """One line per exceeded budget, naming the models, the memory and the bytes over."""
    problems = []
    for key, memory in MEMORY_NAMES.items():
        t = report["total"].get(key)
        if t and t["headroom_bytes"] < 0:
            parts = ", ".join(f"{p['part']} ({p['bytes']} bytes)" for p in t["parts"])
            problems.append(f"target {report['target']['name']}: {memory} over budget by "
                            f"{-t['headroom_bytes']} bytes ({t['used_bytes']} used of {t['budget_bytes']}: {parts})")
    return problems


def check_budget(report: dict) -> None:
    problems = over_budget(report)
    if problems:
        raise OverBudget("; ".join(problems))


def render_markdown(report: dict, models: list[ModelFigures], chart_name: str | None = None) -> str:
    t = report["target"]
    total = report["total"]
    lines = [
        f"# Memory report: {t['name']}",
        "",
        f"{t['description']}. Accelerator `{t['accelerator']}`, Vela system config "
        f"`{t['system_config']}`, memory mode `{t['memory_mode']}`: tensor arena in {MEMORY_NAMES[t['arena_memory']]}, "
        f"weights read from {MEMORY_NAMES[t['model_memory']]}. Models run "
        f"{t['models_run'].replace('_', ' ')}.",
        "",
        "| model | technique | built by | SRAM KiB | DRAM KiB | flash KiB | arena KiB | Vela SRAM KiB | Vela flash KiB "
        "| NPU ops | CPU ops | MACs | cycles | inference ms | TFLite bytes | FP32 | INT8 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        made = f"{m.profile} profile, {m.dataset} data" if m.profile else "-"
        lines.append(
            f"| {m.name} | {m.technique} | {made} | {kib(m.sram_bytes)} | {kib(m.dram_bytes)} | {kib(m.flash_bytes)} | "
            f"{kib(m.arena_bytes)} | {kib(m.vela_sram_bytes)} | {kib(m.vela_flash_bytes)} | {m.npu_ops} | "
            f"{m.cpu_ops} | {m.macs:,} | {m.cycles:,} | {m.inference_ms:.3f} | {m.tflite_bytes:,} | "
            f"{fraction(m.accuracy['fp32'])} | {fraction(m.accuracy['int8'])} |")
    lines += [
        "",
        "## Firmware image budget",
        "",
        "| memory | region | used KiB | budget KiB | headroom KiB | headroom % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, memory in MEMORY_NAMES.items():
        if key in total and isinstance(total[key], dict):
            h = total[key]
            lines.append(f"| {memory} | {h['region']} | {kib(h['used_bytes'])} | {kib(h['budget_bytes'])} | "
                         f"{kib(h['headroom_bytes'])} | {h['headroom_percent']:.1f} |")
    lines += ["", f"**Fits: {'yes' if total['fits'] else 'NO'}**", ""]
    for problem in over_budget(report):
        lines += [f"- {problem}", ""]
    lines += ["What each memory holds:", ""]
    for key, memory in MEMORY_NAMES.items():
        if key in total and isinstance(total[key], dict):
            parts = "; ".join(f"{p['part']} {p['bytes']:,} B" for p in total[key]["parts"]) or "nothing"
            lines.append(f"- {memory}: {parts}")
    lines += [
        "",
        "A model's arena is Vela's scratch tensor (feature maps, input and output) plus the TFLM overhead "
        "allowance, 16-byte aligned. Its flash figure is the compiled model array as it sits in flash, padded "
        "to its 16-byte alignment; Vela's weights and command stream figure is beside it.",
        "",
    ]
    if chart_name:
        lines += [f"![SRAM, DRAM and flash per model against the budget]({chart_name})", ""]
    for m in models:
        lines += [f"## {m.name}: where it goes", ""]
        lines.append(f"{m.npu_ops} operators on the NPU, {m.cpu_ops} on the CPU"
                     + (f" ({', '.join(m.cpu_op_names)})." if m.cpu_op_names else "."))
        lines.append("")
        for title, rows, unit in (("cycles", m.top_cycles, "cycles"), ("staging memory", m.top_staging, "bytes")):
            if not rows:
                continue
            lines += [f"Top layers by {title}:", "", f"| layer | operator | on | {unit} |", "|---|---|---|---:|"]
            lines += [f"| `{short_layer(r['name'], 56, '...')}` | {r['operator']} | {r['target']} | {r['value']:,} |" for r in rows]
            lines.append("")
        if m.per_head:
            lines += ["INT8 per head on the test split (threshold per head chosen on the validation split):", "",
                      "| head | precision | recall | F1 | ROC AUC | threshold |", "|---|---:|---:|---:|---:|---:|"]
            for head, r in m.per_head.items():
                auc = "-" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
                lines.append(f"| {head} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {auc} | "
                             f"{r['threshold']:.4f} |")
            lines.append("")
        if m.confusion_int8:
            lines += ["INT8 confusion matrix on the test split (rows: true, columns: predicted):", ""]
            lines.append("| true \\ predicted | " + " | ".join(m.labels) + " | accuracy |")
            lines.append("|---" * (len(m.labels) + 2) + "|")
            for label, row in zip(m.labels, m.confusion_int8, strict=True):
                acc = m.per_class_int8.get(label)
                lines.append(f"| {label} | " + " | ".join(str(v) for v in row)
                             + f" | {'-' if acc is None else f'{acc:.3f}'} |")
            lines.append("")
    return "\n".join(lines)


def render_chart(report: dict, path) -> None:
    """Stacked bars per memory, in percent of its budget, one colour per model (grey: shared by
    several), the used and budget KiB at the end of each bar. Deterministic PNG (no timestamp)."""
    from npubuild.charts import pyplot, save_png

    plt = pyplot()

    total = report["total"]
    kinds = [k for k in MEMORY_NAMES if isinstance(total.get(k), dict)]
    models = [m["name"] for m in report["models"]]
    palette = plt.get_cmap("tab10").colors
    colour = {name: palette[i % len(palette)] for i, name in enumerate(models)}
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.7 * len(kinds)), dpi=100)
    legend = {}
    widest = 100.0
    for row, kind in enumerate(kinds):
        budget = total[kind]["budget_bytes"]
        left = 0.0
        for part in total[kind]["parts"]:
            width = 100.0 * part["bytes"] / budget
            owners = part["models"]
            key = owners[0] if len(owners) == 1 else "shared"
            bar = ax.barh(row, width, left=left, color=colour.get(key, "0.6"), edgecolor="white", height=0.6)
            legend.setdefault(key if key != "shared" else "shared by the models", bar)
            left += width
        widest = max(widest, left)
        ax.text(left + 1, row, f"{total[kind]['used_bytes'] / 1024:,.1f} of {budget / 1024:,.0f} KiB",
                va="center", fontsize=8)
    ax.axvline(100.0, color="black", linewidth=1.5)
    ax.set_yticks(range(len(kinds)), [MEMORY_NAMES[k] for k in kinds])
    ax.invert_yaxis()
    ax.set_xlim(0, widest * 1.3)
    ax.set_xlabel("% of the ML budget (line: 100%)")
    ax.set_title(f"{report['target']['name']} ({report['target']['accelerator']}): "
                 f"{'fits' if total['fits'] else 'OVER BUDGET'}")
    ax.legend(legend.values(), legend.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


def figures_from_file(path) -> ModelFigures:
    """The figures the assets stage wrote beside a model's assets (`<model>_figures.json`)."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(ModelFigures)}
        return ModelFigures(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as e:
        raise BuildError(f"{path}: not a model figures file ({e}); rebuild the model or remove its folder") from None


def figures_from_report(report: dict) -> list[ModelFigures]:
    """The model figures a written report holds (to re-check it against an edited target)."""
    known = {f.name for f in fields(ModelFigures)}
    return [ModelFigures(**{k: v for k, v in m.items() if k in known}) for m in report["models"]]


def render_summary(reports: dict[str, dict]) -> str:
    """Every target x model in one table (firmware_assets/summary.md)."""
    lines = [
        "# Firmware assets: every target and model",
        "",
        "| target | accelerator | model | technique | built by | SRAM KiB | DRAM KiB | flash KiB | inference ms | INT8 | "
        "image fits |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in sorted(reports):
        rep = reports[name]
        for m in rep["models"]:
            made = f"{m['profile']}, {m['dataset']}" if m.get("profile") else "-"
            lines.append(f"| {name} | {rep['target']['accelerator']} | {m['name']} | {m['technique']} | {made} | "
                         f"{kib(m['sram_bytes'])} | {kib(m.get('dram_bytes', 0))} | {kib(m['flash_bytes'])} | "
                         f"{m['inference_ms']:.3f} | {fraction(m['accuracy']['int8'])} | "
                         f"{'yes' if rep['total']['fits'] else 'NO'} |")
    lines += ["", "| target | SRAM used / budget KiB | DRAM used / budget KiB | flash used / budget KiB | fits |",
              "|---|---:|---:|---:|---|"]
    for name in sorted(reports):
        total = reports[name]["total"]

        def cell(key, total=total):
            h = total.get(key)
            return f"{kib(h['used_bytes'])} / {kib(h['budget_bytes'])}" if isinstance(h, dict) else "-"

        lines.append(f"| {name} | {cell('sram')} | {cell('dram')} | {cell('flash')} | "
                     f"{'yes' if total['fits'] else 'NO'} |")
    lines += ["", "Per model: SRAM is its arena (or NPU fast scratch where the arena is in DRAM); the firmware "
              "image columns add both models up as each target runs them (shared or summed arenas, I/O buffers). "
              "See each target's memory_report.md.", ""]
    return "\n".join(lines)
