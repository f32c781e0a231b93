"""`invoke evaluate`: the shipped models, FP32 and INT8, on a user's labelled folder or on the
built-in test sets, written to firmware_assets/evaluate/<model>-<dataset>.{json,md} and a
confusion-matrix PNG.

Real recordings and photos vary; one bad file never stops an evaluation: it is skipped and
counted with its reason. Policies for keyword clips: stereo is averaged to mono, other sample
rates are resampled to 16 kHz, the DC offset (the clip's mean) is removed, clips shorter than
1 s are zero-padded and longer ones keep their loudest second; clipped recordings (more than
0.1% of samples at full scale) are kept and counted. Images: centre square crop, resized (the
build's policy); unreadable or smaller than 32x32: skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npubuild.config import DETECTOR_FIELDS, Recipe, resolve_models
from npubuild.errors import BuildError
from npubuild.stages import atomic_path, write_json, write_text

CLIPPED_SHARE = 0.001  # a clip is "clipped" when more of its samples than this are at full scale
SKIPPED_LISTED = 20  # skipped files named in the report (all are counted)


@dataclass
class Folder:
    """What was read from a labelled folder: model inputs, labels, and what was skipped."""

    x: np.ndarray
    y: np.ndarray
    read: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> files
    converted: dict[str, int] = field(default_factory=dict)  # policy -> files it changed
    selection: str = ""

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)


def _reason(error: BuildError, path: Path) -> str:
    """The problem part of a one-line error (`<path>: <problem> (<detail>)`)."""
    text = str(error).removeprefix(f"{path}: ")
    return re.sub(r" \(.*\)$", "", text)


# --------------------------------------------------------------------------- keyword spotting


SPLIT_LISTS = ("testing_list.txt", "validation_list.txt")


def _kws_files(recipe: Recipe, data_dir: Path, folder: Folder) -> tuple[list[tuple[Path, int]], list[Path], str]:
    """(clip, label) pairs of a Speech Commands-layout folder and its background-noise files; every
    other file under `data_dir` is counted in `folder.skipped` with its reason. With a
    `testing_list.txt`, the word folders' clips it does not name are skipped (another split);
    `_silence_/` and `_unknown_/` (the released test set's layout) are taken whole."""
    listed = data_dir / "testing_list.txt"
    wanted = set(listed.read_text().split()) if listed.is_file() else None
    unknown, silence = recipe.labels.index("_unknown_"), recipe.labels.index("_silence_")
    pairs, noise = [], []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(data_dir)
        name = rel.as_posix()
        if len(rel.parts) == 1:
            folder.skip("split list (read, not a clip)" if rel.name in SPLIT_LISTS else "not in a word folder", name)
            continue
        if len(rel.parts) > 2:
            folder.skip("in a subfolder of a word folder", name)
            continue
        if path.suffix.lower() != ".wav":
            folder.skip("not a .wav file", name)
            continue
        word = rel.parts[0]
        if word == "_background_noise_":
            noise.append(path)
        elif word in ("_silence_", "_unknown_"):
            pairs.append((path, silence if word == "_silence_" else unknown))
        elif word.startswith("_"):
            folder.skip(f"folder {word}/ is not a class (known: _silence_, _unknown_, _background_noise_, words)",
                        name)
        elif wanted is not None and name not in wanted:
            folder.skip("not named in testing_list.txt (another split)", name)
        else:
            pairs.append((path, recipe.labels.index(word) if word in recipe.keywords else unknown))
    selection = (f"the {len(wanted)} clips named in testing_list.txt" if wanted is not None
                 else "every clip in the word folders")
    return pairs, noise, (selection + "; _unknown_/ clips as unknown, _silence_/ clips and 1 s pieces of "
                          "_background_noise_/ as silence")


def read_kws_folder(recipe: Recipe, data_dir: Path, mean: np.ndarray, std: np.ndarray) -> Folder:
    from npubuild.kinds.kws.data import WavNotes, fit_clip, read_wav
    from npubuild.kinds.kws.frontend import mfcc_batched, standardise

    fe = recipe.frontend
    folder = Folder(np.zeros(0), np.zeros(0))
    pairs, noise_files, folder.selection = _kws_files(recipe, data_dir, folder)
    notes = WavNotes()
    clips, labels = [], []
    dc = clipped = files_used = 0

    def load(path: Path) -> np.ndarray | None:
        nonlocal dc, clipped
        try:
            audio = read_wav(path, fe.sample_rate, notes)
        except BuildError as e:
            folder.skip(_reason(e, path), path.relative_to(data_dir).as_posix())
            return None
        if not np.isfinite(audio).all():
            folder.skip("samples that are not finite numbers", path.relative_to(data_dir).as_posix())
            return None
        clipped += np.mean(np.abs(audio) >= 0.999) > CLIPPED_SHARE
        offset = float(audio.mean())
        dc += abs(offset) > 1e-3
        return audio - offset

    for path, label in pairs:
        audio = load(path)
        if audio is not None:
            notes.count_length(len(audio), fe.clip_samples)
            clips.append(fit_clip(audio, fe.clip_samples))
            labels.append(label)
            files_used += 1
    silence = recipe.labels.index("_silence_")
    pieces = 0
    for path in noise_files:
        audio = load(path)
        if audio is None:
            continue
        if len(audio) < fe.clip_samples:
            folder.skip("background noise shorter than 1 s", path.relative_to(data_dir).as_posix())
            continue
        files_used += 1
        for start in range(0, len(audio) - fe.clip_samples + 1, fe.clip_samples):
            clips.append(audio[start:start + fe.clip_samples])
            labels.append(silence)
            pieces += 1
    if not clips:
        raise BuildError(f"{data_dir}: no readable .wav clips in a Speech Commands layout "
                         f"(one folder per word)")
    folder.x = standardise(mfcc_batched(np.stack(clips).astype(np.float32), fe), mean, std).reshape(len(clips), -1)
    folder.y = np.array(labels, np.int64)
    folder.read = files_used
    folder.converted = {k: int(v) for k, v in {
        "stereo averaged to mono": notes.downmixed, "resampled to 16 kHz": sum(notes.resampled.values()),
        "DC offset removed": dc, "clipped (kept)": clipped, "shorter than 1 s, zero-padded": notes.padded,
        "longer than 1 s, loudest second kept": notes.trimmed, "1 s pieces of background noise": pieces}.items()}
    return folder


# --------------------------------------------------------------------------- image quality


def read_quality_folder(recipe: Recipe, data_dir: Path) -> Folder:
    from npubuild.kinds.quality.data import read_image, read_labels, to_model_input

    rows = read_labels(data_dir, recipe.heads, every_split=False)
    folder = Folder(np.zeros(0), np.zeros(0), selection="every image listed in labels.csv")
    listed = {name for name, _, _ in rows}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        name = path.relative_to(data_dir).as_posix()
        if name not in listed:
            folder.skip("labels file (read, not an image)" if name == "labels.csv" else "not listed in labels.csv",
                        name)
    images, labels = [], []
    for name, _, row in rows:
        path = data_dir / name
        try:
            images.append(read_image(path, recipe.image.height))
        except BuildError as e:
            folder.skip(_reason(e, path), name)
            continue
        labels.append(row)
    if not images:
        raise BuildError(f"{data_dir / 'labels.csv'}: none of the listed images could be read")
    folder.x = to_model_input(np.stack(images))
    folder.y = np.array(labels, np.int64)
    folder.read = len(images)
    return folder


# --------------------------------------------------------------------------- scoring


def _score(recipe: Recipe, model, tflite: Path, x: np.ndarray, y: np.ndarray, evaluation: dict) -> dict:
    """FP32 and INT8 metrics of one labelled set (kws: accuracy per class; quality: per head,
    at the thresholds the build chose on its validation split)."""
    if recipe.task == "image_quality":
        from npubuild.int8_runner import dequantize
        from npubuild.kinds.quality.evaluate import fp32_scores, run_int8_heads, score_set

        heads = list(recipe.heads)
        raw, quant = run_int8_heads(tflite, x)
        int8 = np.stack([dequantize(raw[:, i], *quant[i]) for i in range(len(heads))], axis=1)
        scored = {"count": int(len(y)),
                  "fp32": score_set(heads, y, fp32_scores(model, x), evaluation["thresholds"]["fp32"]),
                  "int8": score_set(heads, y, int8, evaluation["thresholds"]["int8"])}
        for i, h in enumerate(heads):  # 2x2 per head: rows true (ok, issue), columns predicted
            pred = int8[:, i] >= np.float32(evaluation["thresholds"]["int8"][h])
            m = np.zeros((2, 2), np.int64)
            np.add.at(m, (y[:, i].astype(np.int64), pred.astype(np.int64)), 1)
            scored["int8"]["per_head"][h]["confusion"] = m.tolist()
        return scored
    from npubuild.evaluate import classification_metrics, run_int8

    labels = list(recipe.labels)
    fp32 = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    int8 = run_int8(tflite, x).argmax(axis=1)
    return {"count": int(len(y)), "fp32": classification_metrics(labels, y, fp32),
            "int8": classification_metrics(labels, y, int8),
            "int8_fp32_agreement": round(float(np.mean(fp32 == int8)), 6)}


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


def _sweep_summary(path: Path) -> dict | None:
    """The build's detector stage (`listen.tune_detector`): its rule and the chosen setting's figures;
    None when the build has not tuned one."""
    if not path.is_file():
        return None
    sweep = json.loads(path.read_text())
    keep = ("rule", "false_alarm_limit_per_hour", "keyword_clips", "unknown_clips", "keyword_stream_seconds",
            "noise_seconds", "chosen", "grid", "fixed", "clips_from")
    return {k: sweep[k] for k in keep if k in sweep}


def evaluate_dataset(root: Path, *, model: str, data_dir: Path | None, profile: str = "default",
                     target: str | None = None, build_dir: Path | None = None, assets_dir: Path | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Evaluate the shipped model of `profile` (trained on the built-in data) on `data_dir`, or
    on the built-in test sets; write the JSON, Markdown and confusion PNG; return the JSON.
    With `target`, the report also gives what the model costs there (from its memory report)."""
    from npubuild.pipeline import Layout, shipped_paths
    from npubuild.techniques import RECIPES

    layout = Layout.for_project(root, build_dir, assets_dir)
    recipes = resolve_models(layout.root, model)
    if len(recipes) != 1:
        raise BuildError(f"--model: evaluate one model at a time (kws or quality), not {model!r}")
    recipe = recipes[0]
    paths = shipped_paths(layout.root, recipe, profile, layout.build_dir, need=("int8", "evaluation", "features"))
    technique = recipe.ship
    tflite, evaluation_path = paths.int8(technique), paths.evaluation(technique)
    if data_dir is not None and not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")
    evaluation = json.loads(evaluation_path.read_text())
    on_target = _on_target(layout.assets_dir, target, recipe.name) if target else None

    from npubuild import optimize, task

    keras_model = optimize.load_chain_model(RECIPES[technique], *paths.keras_files(technique))

    name = dataset_name(data_dir)
    result: dict = {"model": recipe.name, "recipe": technique, "profile": profile, "dataset": name,
                    "labels": list(recipe.labels) if recipe.task == "keyword_spotting" else list(recipe.heads)}
    sets: dict[str, dict] = {}
    if data_dir is None:
        with np.load(paths.features) as d:
            available = [s for s in ("test", "test_rec") if f"y_{s}" in d.files]
        for split in available:
            x, y = task.load_split(recipe, paths.features, split)
            sets[split] = _score(recipe, keras_model, tflite, x, y.astype(np.int64), evaluation)
        result["source"] = "built-in data: " + ", ".join(
            {"test": "test split (voices held out of training)",
             "test_rec": "recording-like test set (the same held-out voices through rooms, microphones, "
                         "clipping, DC offset and other noise)"}.get(s, s) for s in available)
    else:
        if recipe.task == "image_quality":
            folder = read_quality_folder(recipe, data_dir)
        else:
            with np.load(paths.features) as d:
                folder = read_kws_folder(recipe, data_dir, d["mean"], d["std"])
        sets["folder"] = _score(recipe, keras_model, tflite, folder.x, folder.y, evaluation)
        skipped = sum(len(v) for v in folder.skipped.values())
        result["source"] = f"labelled folder {name}: {folder.selection}"
        result["files"] = {"used": folder.read, "skipped": skipped,
                           "skipped_by_reason": {r: {"count": len(v), "files": v[:SKIPPED_LISTED]}
                                                 for r, v in sorted(folder.skipped.items())},
                           "converted": folder.converted}
    result["sets"] = sets
    if recipe.detector is not None:
        sweep = _sweep_summary(paths.detector(technique))
        settings = {k: sweep["chosen"][k] for k in DETECTOR_FIELDS} if sweep else None
        result["detector"] = {"settings": settings, "sweep": sweep}
    if on_target:
        result["on_target"] = on_target
    if recipe.task == "keyword_spotting" and {"test", "test_rec"} <= set(sets):
        result["gap_int8_points"] = round(100 * (sets["test"]["int8"]["accuracy"]
                                                 - sets["test_rec"]["int8"]["accuracy"]), 2)

    out = layout.assets_dir / "evaluate"
    stem = f"{recipe.name}-{name}"
    main_set = "test_rec" if "test_rec" in sets else next(iter(sets))
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
    """kws: the INT8 confusion matrix (rows: true class, columns: predicted, counts);
    quality: one 2x2 matrix per head. Deterministic PNG (no timestamp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if recipe.task == "keyword_spotting":
        matrices = [("", np.array(scored["int8"]["confusion"]), list(recipe.labels))]
    else:
        matrices = [(h, np.array(m["confusion"]), ["ok", h]) for h, m in scored["int8"]["per_head"].items()]
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_markdown(recipe: Recipe, result: dict, chart: str) -> str:
    sets = result["sets"]
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
    names = list(sets)
    if recipe.task == "keyword_spotting":
        lines += ["| set | samples | FP32 top-1 | INT8 top-1 | INT8 = FP32 |", "|---|---:|---:|---:|---:|"]
        for n in names:
            s = sets[n]
            lines.append(f"| {n} | {s['count']} | {_pct(s['fp32']['accuracy'])} | {_pct(s['int8']['accuracy'])} | "
                         f"{_pct(s['int8_fp32_agreement'])} |")
        if "gap_int8_points" in result:
            lines += ["", f"Gap, INT8 test - recording-like: {result['gap_int8_points']:.2f} points."]
        lines += ["", "INT8 accuracy per class:", "",
                  "| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label in recipe.labels:
            lines.append(f"| {label} | " + " | ".join(_pct(sets[n]["int8"]["per_class"][label]) for n in names) + " |")
    else:
        for n in names:
            s = sets[n]
            lines += [f"## {n}: {s['count']} images, macro-F1 FP32 {s['fp32']['macro_f1']:.4f}, "
                      f"INT8 {s['int8']['macro_f1']:.4f}", "",
                      "| head | precision FP32 | recall FP32 | F1 FP32 | precision INT8 | recall INT8 | F1 INT8 |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for h in recipe.heads:
                a, b = s["fp32"]["per_head"][h], s["int8"]["per_head"][h]
                lines.append(f"| {h} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                             f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
            lines.append("")
    detector = result.get("detector")
    if detector and detector["settings"]:
        d = detector["settings"]
        lines += ["", f"Streaming detector (tuned by the build, in kws_meta.h): every {d['stride_ms']} ms, average of "
                      f"{d['average_windows']} window(s), threshold {d['threshold']:g}, refractory "
                      f"{d['refractory_ms']} ms."]
        sweep = detector["sweep"]
        if sweep:
            c = sweep["chosen"]
            lines += [f"Chosen by the build's detector stage on {sweep.get('clips_from')} ({sweep.get('keyword_clips')} "
                      f"keyword clips in streams, {sweep.get('noise_seconds')} s of noise): detection rate "
                      f"{_pct(c.get('detection_rate'))}, {c.get('false_alarms_per_hour')} false alarms per hour "
                      f"of noise, {c.get('wrong_word')} wrong-word detections. Rule: {sweep.get('rule')}"]
    lines += ["", f"![INT8 confusion]({chart})", ""]
    return "\n".join(lines)
