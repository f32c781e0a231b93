"""`invoke evaluate`: the shipped models, FP32 and INT8, on a user's labelled folder or on the
built-in test sets, written to firmware_assets/evaluate/<model>-<dataset>.{json,md} and a
confusion-matrix PNG.

Real recordings and photos vary; one bad file never stops an evaluation: it is skipped and
counted with its reason. Policies for keyword clips: stereo is averaged to mono, other sample
rates are resampled to 16 kHz, the DC offset (the clip's mean) is removed, clips shorter than
1 s are zero-padded and longer ones keep their loudest second; clipped recordings (more than
0.1% of samples at full scale) are kept and counted. Images: the views the model's heads read
(`kinds/quality/views.py`, as the build makes them); unreadable or smaller than 32x32: skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from npubuild.config import Recipe, resolve_models
from npubuild.errors import BuildError
from npubuild.stages import write_json, write_text

SKIPPED_LISTED = 20  # skipped files named in the report (all are counted)


def dataset_name(data_dir: Path | None) -> str:
    if data_dir is None:
        return "builtin"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", data_dir.resolve().name).strip("_")
    return name or "data"


def _on_target(assets_dir: Path, target: str, model: str) -> dict:
    """The model's cost on `target`, from the memory report `invoke build` wrote for it."""
    path = assets_dir / target / "memory_report.json"
    if not path.is_file():
        raise BuildError(f"{path}: no memory report; run invoke build --target {target} first")
    entry = next((m for m in json.loads(path.read_text())["models"] if m["name"] == model), None)
    if entry is None:
        raise BuildError(f"{path}: has no model {model!r}; run invoke build --model {model} --target {target}")
    return {"target": target, **{k: entry[k] for k in ("technique", "inference_ms", "sram_bytes", "flash_bytes",
                                                        "npu_ops", "cpu_ops")}}


def evaluate_dataset(root: Path, *, model: str, data_dir: Path | None, profile: str = "default",
                     target: str | None = None, build_dir: Path | None = None, assets_dir: Path | None = None,
                     trained_on: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Evaluate the shipped model of `profile` (trained on the built-in data, or on `trained_on`: the
    `--data-dir` of its build) on `data_dir`, or on its build's own test sets; write the JSON, Markdown
    and confusion PNG; return the JSON.
    With `target`, the report also gives what the model costs there (from its memory report)."""
    from npubuild.optimization_recipes import RECIPES
    from npubuild.pipeline import Layout, dataset_id, shipped_paths

    layout = Layout.for_project(root, build_dir, assets_dir)
    recipes = resolve_models(layout.root, model)
    if len(recipes) != 1:
        raise BuildError(f"--model: evaluate one model at a time (a name from models/), not {model!r}")
    recipe = recipes[0]
    paths = shipped_paths(layout.root, recipe, profile, layout.build_dir, need=("int8", "evaluation", "features"),
                          trained_on=trained_on)
    technique = recipe.ship
    tflite, evaluation_path = paths.int8(technique), paths.evaluation(technique)
    if data_dir is not None and not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")
    evaluation = json.loads(evaluation_path.read_text())
    on_target = _on_target(layout.assets_dir, target, recipe.name) if target else None

    from npubuild import optimize
    from npubuild.kinds import get_kind

    kind = get_kind(recipe.kind)
    keras_model = optimize.load_chain_model(RECIPES[technique], *paths.keras_files(technique))

    name = dataset_name(data_dir)
    result: dict = {"model": recipe.name, "recipe": technique, "profile": profile, "dataset": name,
                    "labels": list(recipe.labels)}
    if trained_on is not None:
        from npubuild.pipeline import dataset_label

        result["trained_on"] = dataset_label(trained_on)
    sets: dict[str, dict] = {}
    if data_dir is None:
        available = kind.builtin_sets(recipe, paths.features)
        for split in available:
            x, y = kind.load_split(recipe, paths.features, split)
            sets[split] = kind.score(recipe, keras_model, tflite, x, y.astype(np.int64), evaluation)
        result["source"] = "built-in data: " + ", ".join(available.values())
        from npubuild.stages import Cache

        cache = Cache(layout.root, log)
        for stage in kind.evaluation_stages(recipe, profile, paths, technique, log):
            cache.run(stage)
    else:
        folder = kind.read_folder(recipe, data_dir, paths.features)
        sets["folder"] = kind.score(recipe, keras_model, tflite, folder.x, folder.y, evaluation)
        skipped = sum(len(v) for v in folder.skipped.values())
        result["source"] = f"labelled folder {name}: {folder.selection}"
        result["files"] = {"used": folder.read, "skipped": skipped,
                           "skipped_by_reason": {r: {"count": len(v), "files": v[:SKIPPED_LISTED]}
                                                 for r, v in sorted(folder.skipped.items())},
                           "converted": folder.converted}
    result["sets"] = sets
    kind.summarize(recipe, result, paths, technique)
    if on_target:
        result["on_target"] = on_target

    out = layout.assets_dir / "evaluate"
    stem = f"{recipe.name}-{name}" + ("" if trained_on is None else f"-by-{dataset_id(trained_on)}")
    main_set = list(sets)[-1]  # a labelled folder, or the last (hardest) built-in set
    render_confusion(recipe, sets[main_set], out / f"{stem}-confusion.png",
                     f"{recipe.name} INT8, {name} {'' if main_set == 'folder' else main_set}".strip())
    write_json(out / f"{stem}.json", result)
    write_text(out / f"{stem}.md", render_markdown(recipe, result, f"{stem}-confusion.png"))
    for set_name, s in sets.items():
        log(f"{recipe.name} on {name} {set_name}: {s['count']} samples, FP32 {s['fp32']['accuracy']:.4f}, "
            f"INT8 {s['int8']['accuracy']:.4f}")
    if "files" in result:
        log(f"  {result['files']['used']} used, {result['files']['skipped']} skipped")
    log(f"wrote {(out / stem).relative_to(layout.root) if out.is_relative_to(layout.root) else out / stem}"
        ".{json,md} and -confusion.png")
    return result


# --------------------------------------------------------------------------- rendering


def render_confusion(recipe: Recipe, scored: dict, path: Path, title: str) -> None:
    """The kind's INT8 confusion matrices (`ModelKind.confusion_matrices`: rows true, columns predicted,
    counts). Deterministic PNG (no timestamp)."""
    from npubuild.charts import pyplot, save_png
    from npubuild.kinds import get_kind

    plt = pyplot()
    matrices = get_kind(recipe.kind).confusion_matrices(recipe, scored)
    fig, axes = plt.subplots(1, len(matrices), figsize=(7.5 if len(matrices) == 1 else 3 * len(matrices), 6.5
                                                        if len(matrices) == 1 else 3.2), dpi=100, squeeze=False)
    for ax, (head, m, ticks) in zip(axes[0], matrices, strict=True):
        rows = m.sum(axis=1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(ticks)), ticks, rotation=60, fontsize=8)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if head:
            ax.set_title(head, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def render_markdown(recipe: Recipe, result: dict, chart: str) -> str:
    lines = [f"# {recipe.name} ({result['recipe']}, profile {result['profile']}) on {result['dataset']}", "",
             f"Source: {result['source']}.", ""]
    if "files" in result:
        f = result["files"]
        lines += [f"Files: {f['used']} used, {f['skipped']} skipped.", ""]
        converted = [f"{k}: {v}" for k, v in f["converted"].items() if v]
        if converted:
            lines += ["Converted by the read policy: " + "; ".join(converted) + ".", ""]
        for reason, s in f["skipped_by_reason"].items():
            shown = ", ".join(f"`{n}`" for n in s["files"])
            lines.append(f"- skipped, {reason}: {s['count']} ({shown}{', ...' if s['count'] > len(s['files']) else ''})")
        if f["skipped_by_reason"]:
            lines.append("")
    if "on_target" in result:
        t = result["on_target"]
        lines += [f"On {t['target']}: {t['inference_ms']:.3f} ms per inference (Vela's estimate), SRAM "
                  f"{t['sram_bytes'] / 1024:.1f} KiB, flash {t['flash_bytes'] / 1024:.1f} KiB, "
                  f"{t['npu_ops']} NPU / {t['cpu_ops']} CPU operators.", ""]
    from npubuild.kinds import get_kind

    lines += get_kind(recipe.kind).render_scores(recipe, result)
    lines += ["", f"![INT8 confusion]({chart})", ""]
    return "\n".join(lines)
