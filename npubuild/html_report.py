"""firmware_assets/index.html: the one page a person reads after a build.

Everything on the page comes from files the build leaves in firmware_assets/
(memory_report.json per target, evaluation/<model>.json, compare/<model>.json,
evaluate/*.json, last_build.json), so `invoke report` can rebuild the page from
that folder alone. Reading (`read_assets`), shaping (`shape_page`, pure) and
rendering (jinja2, `templates/index.html.j2`) are separate steps.

The page is deterministic: no dates, no absolute paths, no stage times. The times
of the last build live only in last_build.json (linked from the page), the one
file under firmware_assets/ that differs between two runs of the same build.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from npubuild.errors import BuildError
from npubuild.report_text import kib, percent, short_layer

PAGE = "index.html"
LAST_BUILD = "last_build.json"
EVALUATION_DIR = "evaluation"  # the build's own evaluation of each shipped model (test split)
LINKED_SUFFIXES = (".json", ".md", ".c", ".h", ".png")
MEMORIES = (("sram", "SRAM"), ("flash", "flash"), ("dram", "DRAM"))
# Colour-blind-safe (Okabe-Ito), one per model in order of appearance; grey for shared parts.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442")
SHARED_COLOUR = "#8a8f98"
TOP_LAYERS = 8
SET_NAMES = {"test": "test split", "test_rec": "recording-like test set", "folder": "labelled folder"}


# --------------------------------------------------------------------------- writing (build hook side)


def write_last_build(assets_dir: Path, results, seconds: float) -> Path:
    """last_build.json: every stage of the last build (ran or up to date, why, seconds)."""
    from npubuild.stages import write_json

    path = assets_dir / LAST_BUILD
    write_json(path, {"seconds": round(seconds, 3),
                      "stages": [{"name": r.name, "ran": r.ran, "reason": r.reason, "seconds": round(r.seconds, 3)}
                                 for r in results]})
    return path


def write_build_evaluations(assets_dir: Path, shipped: list[dict]) -> None:
    """evaluation/<model>.json: the build's evaluation of each shipped model, copied out of build/
    so the page can be made from firmware_assets/ alone. `shipped`: model, recipe, profile,
    dataset and the path of its evaluation.json."""
    from npubuild.stages import write_json

    for entry in shipped:
        evaluation = json.loads(Path(entry["evaluation"]).read_text())
        write_json(assets_dir / EVALUATION_DIR / f"{entry['model']}.json",
                   {**{k: v for k, v in entry.items() if k != "evaluation"}, "evaluation": evaluation})


def write_page(assets_dir: Path) -> Path:
    """Read firmware_assets/, write firmware_assets/index.html; return its path."""
    from npubuild.stages import write_text

    path = assets_dir / PAGE
    write_text(path, render_page(shape_page(read_assets(assets_dir))))
    return path


def write_after_build(assets_dir: Path, summary, shipped: list[dict]) -> Path:
    """The build's hook: its evaluations and stages into firmware_assets/, then the page."""
    write_build_evaluations(assets_dir, shipped)
    write_last_build(assets_dir, summary.results, summary.seconds)
    return write_page(assets_dir)


def open_page(path: Path, log=print) -> None:
    """Print the page's path; open it in a browser where one exists (never fails when none does)."""
    import webbrowser

    log(str(path))
    try:
        webbrowser.get()
    except webbrowser.Error:
        log("no web browser found here: open the file above in one")
        return
    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except Exception:  # a browser that fails to start is not the report's failure
        opened = False
    if not opened:
        log("could not start a web browser: open the file above in one")


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise BuildError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BuildError(f"{path}: expected a JSON object")
    return value


def read_assets(assets_dir: Path) -> dict:
    """Every JSON file the page summarises, keyed by what it is, and the files it links to
    (paths relative to `assets_dir`, sorted)."""
    if not assets_dir.is_dir():
        raise BuildError(f"{assets_dir}: no firmware assets; run invoke build first")
    reports = {p.parent.name: _read_json(p) for p in sorted(assets_dir.glob("*/memory_report.json"))}
    if not reports:
        raise BuildError(f"{assets_dir / '<target>' / 'memory_report.json'}: no memory report; run invoke build first")

    def folder(name: str) -> dict[str, dict]:
        return {p.stem: _read_json(p) for p in sorted((assets_dir / name).glob("*.json"))
                if not p.name.startswith(".")}  # not the stages' stamps

    last = assets_dir / LAST_BUILD
    files = sorted(p.relative_to(assets_dir).as_posix() for p in assets_dir.rglob("*")
                   if p.is_file() and p.suffix in LINKED_SUFFIXES and not p.name.startswith(".")
                   and not any(part.startswith(".") for part in p.relative_to(assets_dir).parts))
    return {"reports": reports, "evaluations": folder(EVALUATION_DIR), "compare": folder("compare"),
            "evaluate": folder("evaluate"), "last_build": _read_json(last) if last.is_file() else None,
            "files": files}


# --------------------------------------------------------------------------- shaping (pure)


def _model_names(data: dict) -> list[str]:
    names: list[str] = []
    for rep in data["reports"].values():
        for m in rep.get("models", []):
            if m.get("name") not in names:
                names.append(m.get("name"))
    for source in ("evaluations", "compare"):
        for key, value in data[source].items():
            name = value.get("model", key)
            if name not in names:
                names.append(name)
    return names


def memory_bar(memory: dict, colours: dict[str, str]) -> dict:
    """One memory of a target as a bar: parts as segments, in percent of the bar's width. The bar
    spans the budget, or the use when that is larger (then the budget mark sits inside it)."""
    used, budget = memory.get("used_bytes", 0), memory.get("budget_bytes", 0)
    span = max(used, budget, 1)
    segments, left = [], 0.0
    for part in memory.get("parts", []):
        owners = part.get("models", [])
        width = 100.0 * part.get("bytes", 0) / span
        segments.append({"label": part.get("part", ""), "bytes": part.get("bytes", 0),
                         "colour": colours.get(owners[0], SHARED_COLOUR) if len(owners) == 1 else SHARED_COLOUR,
                         "left": round(left, 3), "width": round(width, 3)})
        left += width
    headroom = memory.get("headroom_bytes", budget - used)
    return {"used": used, "budget": budget, "headroom": headroom,
            "headroom_percent": memory.get("headroom_percent", 0.0), "region": memory.get("region", ""),
            "over": headroom < 0, "budget_at": round(100.0 * budget / span, 3), "segments": segments,
            "used_percent_of_budget": round(100.0 * used / budget, 1) if budget else None}


def _layers(rows: list[dict], unit: str) -> list[dict]:
    return [{"name": short_layer(str(r.get("name", "")), 48, "…"), "full": str(r.get("name", "")),
             "operator": r.get("operator", ""), "on": r.get("target", ""), "value": r.get("value", 0), "unit": unit}
            for r in rows[:TOP_LAYERS]]


def _model_alone_fits(m: dict, budgets: dict[str, int]) -> bool:
    """Whether this model alone stays within each budget (the image total may still not fit)."""
    return all(m.get(f"{key}_bytes", 0) <= budget for key, budget in budgets.items() if budget)


def shape_target(name: str, rep: dict, colours: dict[str, str], files: set[str]) -> dict:
    t, total = rep.get("target", {}), rep.get("total", {})
    memories = [{"key": key, "label": label, **memory_bar(total[key], colours)}
                for key, label in MEMORIES if isinstance(total.get(key), dict)]
    budgets = {m["key"]: m["budget"] for m in memories}
    models = []
    for m in rep.get("models", []):
        ops = (m.get("npu_ops") or 0) + (m.get("cpu_ops") or 0)
        models.append({
            "name": m.get("name"), "technique": m.get("technique", "-"), "colour": colours.get(m.get("name")),
            "sram": m.get("sram_bytes", 0), "flash": m.get("flash_bytes", 0), "dram": m.get("dram_bytes", 0),
            "arena": m.get("arena_bytes", 0), "cycles": m.get("cycles", 0), "inference_ms": m.get("inference_ms"),
            "macs": m.get("macs", 0), "npu_ops": m.get("npu_ops", 0), "cpu_ops": m.get("cpu_ops", 0),
            "npu_share": round(100.0 * (m.get("npu_ops") or 0) / ops, 1) if ops else 0.0,
            "cpu_op_names": list(m.get("cpu_op_names", [])), "accuracy": m.get("accuracy") or {},
            "fits_alone": _model_alone_fits(m, budgets), "profile": m.get("profile"), "dataset": m.get("dataset"),
            "top_cycles": _layers(m.get("top_cycles", []), "cycles"),
            "top_staging": _layers(m.get("top_staging", []), "bytes"),
            "links": sorted(f for f in files if f.startswith(f"{name}/{m.get('name')}/")),
        })
    return {"name": name, "description": t.get("description", ""), "accelerator": t.get("accelerator", ""),
            "system_config": t.get("system_config", ""), "memory_mode": t.get("memory_mode", ""),
            "models_run": str(t.get("models_run", "")).replace("_", " "), "fits": bool(total.get("fits")),
            "memories": memories, "models": models,
            "links": [f for f in (f"{name}/memory_report.json", f"{name}/memory_report.md",
                                  f"{name}/memory_chart.png") if f in files]}


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def compare_chart(result: dict, target: str) -> dict:
    """INT8 accuracy against Vela flash on `target`, one point per recipe, in SVG units."""
    w, h, pad_l, pad_r, pad_t, pad_b = 560, 300, 64, 24, 16, 44
    points = [{"recipe": r.get("recipe"), "flash": r["targets"][target].get("flash_bytes", 0),
               "int8": (r.get("accuracy") or {}).get("int8")}
              for r in result.get("recipes", []) if target in r.get("targets", {})]
    points = [p for p in points if p["int8"] is not None]
    if not points:
        return {"target": target, "points": []}
    xs, ys = [p["flash"] / 1024 for p in points], [100 * p["int8"] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    x_pad = (x_hi - x_lo) * 0.12 or max(x_hi * 0.1, 1.0)
    y_lo, y_hi = min(ys), max(ys)
    y_pad = (y_hi - y_lo) * 0.15 or 1.0
    x_lo, x_hi, y_lo, y_hi = max(0.0, x_lo - x_pad), x_hi + x_pad, max(0.0, y_lo - y_pad), min(100.0, y_hi + y_pad)
    if y_hi <= y_lo:
        y_lo, y_hi = y_hi - 1.0, y_hi

    def sx(v: float) -> float:
        return round(pad_l + (v - x_lo) / (x_hi - x_lo) * (w - pad_l - pad_r), 2)

    def sy(v: float) -> float:
        return round(h - pad_b - (v - y_lo) / (y_hi - y_lo) * (h - pad_t - pad_b), 2)

    shipped = result.get("shipped")
    out = [{**p, "x": sx(x), "y": sy(y), "shipped": p["recipe"] == shipped, "flash_kib": f"{x:,.1f}",
            "int8_pct": f"{y:.2f}"} for p, x, y in zip(points, xs, ys, strict=True)]
    place_labels(out, w, left_edge=pad_l + 2)
    return {"target": target, "width": w, "height": h, "left": pad_l, "right": w - pad_r, "top": pad_t,
            "bottom": h - pad_b, "points": out,
            "x_ticks": [{"at": sx(v), "label": f"{v:,.0f}"} for v in _nice_ticks(x_lo, x_hi) if x_lo <= v <= x_hi],
            "y_ticks": [{"at": sy(v), "label": f"{v:g}"} for v in _nice_ticks(y_lo, y_hi) if y_lo <= v <= y_hi]}


def place_labels(points: list[dict], width: float, left_edge: float = 0.0, char: float = 6.2,
                 height: float = 12.0) -> None:
    """Put each point's label (recipe name) where it overlaps no earlier label and no point: right,
    left, above or below it (shipped point first). Sets label_x, label_y and anchor on each point."""
    taken = [(p["x"] - 8, p["y"] - 8, p["x"] + 8, p["y"] + 8) for p in points]
    for p in sorted(points, key=lambda q: (not q["shipped"], q["x"])):
        text = len(p["recipe"] + (" (shipped)" if p["shipped"] else "")) * char
        options = [(p["x"] + 10, p["y"] + 4, "start"), (p["x"] - 10, p["y"] + 4, "end"),
                   (p["x"], p["y"] - 12, "middle"), (p["x"], p["y"] + 20, "middle")]
        for dy in (18, 32, 46):
            options += [(p["x"], p["y"] - 12 - dy, "middle"), (p["x"], p["y"] + 20 + dy, "middle")]

        def box(x, y, anchor, text=text):
            left = x if anchor == "start" else x - text if anchor == "end" else x - text / 2
            return (left, y - height + 2, left + text, y + 2)

        def free(b):
            inside = b[0] >= left_edge and b[2] <= width
            return inside and not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)

        x, y, anchor = next((o for o in options if free(box(*o))), options[0])
        taken.append(box(x, y, anchor))
        p.update(label_x=round(x, 2), label_y=round(y, 2), anchor=anchor)


def shipped_reason(result: dict, target: str) -> str:
    """Why the shipped recipe, in the compare table's own numbers on `target`."""
    recipes = [r for r in result.get("recipes", []) if target in r.get("targets", {})]
    shipped = next((r for r in recipes if r.get("recipe") == result.get("shipped")), None)
    if shipped is None:
        return f"The shipped recipe {result.get('shipped')} is not in the comparison."

    def acc(r):
        return (r.get("accuracy") or {}).get("int8") or 0.0

    def flash(r):
        return r["targets"][target].get("flash_bytes", 0)

    v = shipped["targets"][target]
    text = f"Ships {shipped['recipe']}: INT8 {percent(acc(shipped))} at {kib(flash(shipped))} KiB Vela flash on {target}"
    if "flash_ratio" in v and "int8_accuracy_change_points" in shipped:
        text += (f" ({v['flash_ratio']:.3f}x the flash of {result.get('baseline', 'ptq')}, "
                 f"{shipped['int8_accuracy_change_points']:+.2f} accuracy points)")
    dominated_by = [r["recipe"] for r in recipes if r is not shipped and acc(r) >= acc(shipped)
                    and flash(r) <= flash(shipped) and (acc(r) > acc(shipped) or flash(r) < flash(shipped))]
    smaller = sum(1 for r in recipes if flash(r) < flash(shipped))
    if dominated_by:
        text += f". Note: {', '.join(dominated_by)} is as accurate and as small or better here."
    else:
        text += (". No other recipe is both as accurate and as small: it is on the accuracy/flash front"
                 + (" and the smallest." if not smaller else "."))
    return text


def _accuracy_rows(name: str, data: dict, report_accuracy: dict) -> list[dict]:
    rows = []
    build_eval = data["evaluations"].get(name)
    if build_eval:
        ev = build_eval.get("evaluation", {})
        rows.append({"source": "build", "set": "test split", "file": f"{EVALUATION_DIR}/{name}.json",
                     "count": ev.get("test_clips", ev.get("test_images")),
                     "fp32": (ev.get("fp32") or {}).get("accuracy"), "int8": (ev.get("int8") or {}).get("accuracy")})
    elif report_accuracy:
        rows.append({"source": "build", "set": "test split", "file": None, "count": None,
                     "fp32": report_accuracy.get("fp32"), "int8": report_accuracy.get("int8")})
    for stem, result in data["evaluate"].items():
        if result.get("model") != name:
            continue
        for set_name, s in (result.get("sets") or {}).items():
            rows.append({"source": f"evaluate {result.get('dataset', stem)}", "set": SET_NAMES.get(set_name, set_name),
                         "file": f"evaluate/{stem}.json", "count": s.get("count"),
                         "fp32": (s.get("fp32") or {}).get("accuracy"), "int8": (s.get("int8") or {}).get("accuracy")})
    return rows


def confusion_table(labels: list[str], matrix: list[list[int]], per_class: dict) -> dict:
    """Rows true, columns predicted; each cell's shade is its share of the row (0..1, 2 decimals)."""
    rows = []
    for label, row in zip(labels, matrix, strict=False):
        total = sum(row) or 1
        rows.append({"label": label, "accuracy": per_class.get(label),
                     "cells": [{"value": v, "shade": round(v / total, 2), "diagonal": i == len(rows)}
                               for i, v in enumerate(row)]})
    return {"labels": labels, "rows": rows}


def shape_model(name: str, data: dict, targets: list[dict], colours: dict[str, str]) -> dict:
    on_targets = [(t["name"], m) for t in targets for m in t["models"] if m["name"] == name]
    first = on_targets[0][1] if on_targets else {}
    report_models = [m for rep in data["reports"].values() for m in rep.get("models", []) if m.get("name") == name]
    report_model = report_models[0] if report_models else {}
    build_eval = data["evaluations"].get(name) or {}
    ev = build_eval.get("evaluation", {})
    labels = ev.get("labels") or report_model.get("labels") or []
    int8 = ev.get("int8") or {}
    per_head = int8.get("per_head") or report_model.get("per_head") or {}
    confusion = None
    if int8.get("confusion") and not per_head:
        confusion = confusion_table(labels, int8["confusion"], int8.get("per_class") or {})
    heads = [{"head": h, "precision": r.get("precision"), "recall": r.get("recall"), "f1": r.get("f1"),
              "roc_auc": r.get("roc_auc"), "threshold": r.get("threshold"),
              "fp32_f1": ((ev.get("fp32") or {}).get("per_head") or {}).get(h, {}).get("f1")}
             for h, r in per_head.items()]
    result = data["compare"].get(name)
    compare = None
    if result:
        compare_targets = sorted({t for r in result.get("recipes", []) for t in r.get("targets", {})})
        compare = {"shipped": result.get("shipped"), "file": f"compare/{name}.json",
                   "markdown": f"compare/{name}.md" if f"compare/{name}.md" in data["files"] else None,
                   "charts": [{**compare_chart(result, t), "reason": shipped_reason(result, t)}
                              for t in compare_targets],
                   "rows": [{"recipe": r.get("recipe"), "steps": " → ".join(r.get("steps", [])) or "-",
                             "fp32": (r.get("accuracy") or {}).get("fp32"), "int8": (r.get("accuracy") or {}).get("int8"),
                             "change": r.get("int8_accuracy_change_points"), "tflite": r.get("tflite_bytes"),
                             "shipped": r.get("recipe") == result.get("shipped")}
                            for r in result.get("recipes", [])]}
    return {"name": name, "colour": colours.get(name), "technique": first.get("technique")
            or build_eval.get("recipe") or (result or {}).get("shipped", "-"),
            "profile": build_eval.get("profile") or report_model.get("profile"),
            "dataset": build_eval.get("dataset") or report_model.get("dataset"),
            "metric": "macro-F1 over the heads" if per_head else "top-1 accuracy",
            "accuracy": _accuracy_rows(name, data, report_model.get("accuracy") or {}),
            "confusion": confusion, "heads": heads, "compare": compare}


def shape_stages(last_build: dict | None) -> dict | None:
    """The last build's stages without their times (those stay in last_build.json)."""
    if not last_build:
        return None
    rows = [{"name": s.get("name", ""), "ran": bool(s.get("ran")), "reason": s.get("reason", "")}
            for s in last_build.get("stages", [])]
    return {"rows": rows, "ran": sum(r["ran"] for r in rows), "up_to_date": sum(not r["ran"] for r in rows)}


def shape_page(data: dict) -> dict:
    """Everything the template shows, as plain values (no I/O)."""
    names = _model_names(data)
    colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    files = set(data["files"])
    targets = [shape_target(name, rep, colours, files) for name, rep in sorted(data["reports"].items())]
    models = [shape_model(n, data, targets, colours) for n in names]
    grid = [{"target": t["name"], "accelerator": t["accelerator"], "fits": t["fits"],
             "cells": {m["name"]: m for m in t["models"]}} for t in targets]
    groups: dict[str, list[str]] = {}
    for f in data["files"]:
        if f == PAGE:
            continue
        groups.setdefault(f.split("/")[0] if "/" in f else "", []).append(f)
    return {"models": models, "model_names": names, "colours": colours, "targets": targets, "grid": grid,
            "all_fit": all(t["fits"] for t in targets), "stages": shape_stages(data["last_build"]),
            "has_last_build": data["last_build"] is not None,
            "files": [{"group": g or "firmware_assets", "files": fs} for g, fs in sorted(groups.items())]}


# --------------------------------------------------------------------------- rendering


def render_page(page: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("npubuild", "templates"), undefined=jinja2.StrictUndefined,
                             autoescape=True, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(kib=kib, percent=percent, thousands=lambda n: "-" if n is None else f"{n:,}")
    return env.get_template("index.html.j2").render(page=page)
