"""The HTML report (firmware_assets/index.html): shaping without a browser, determinism, and the
page of a real smoke build opened in headless Chromium (numbers on the page = the JSON's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from npubuild import html_report
from npubuild.compare import compare_rows
from npubuild.config import load_target
from npubuild.errors import BuildError
from npubuild.report import ModelFigures, build_report
from npubuild.stages import StageResult, write_json

from .conftest import ROOT, TARGET

SHARED = load_target(ROOT / "targets" / f"{TARGET}.toml")  # models run one at a time
DEDICATED = load_target(ROOT / "targets" / "corstone-300-u65-256.toml")  # arena in DRAM
SECOND_TARGET = DEDICATED.name
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------- a firmware_assets folder by hand


def figures(name: str, arena: int, flash: int, fast: int = 0) -> ModelFigures:
    layers = [{"name": f"model/{name}/conv{i};model/{name}/conv{i}/BiasAdd", "operator": "Conv2D", "target": "NPU",
               "value": 1000 - i} for i in range(3)]
    return ModelFigures(name=name, technique="ptq", sram_bytes=arena, flash_bytes=flash, vela_sram_bytes=arena,
                        vela_flash_bytes=flash, arena_bytes=arena, fast_scratch_bytes=fast, io_bytes=500, npu_ops=40,
                        cpu_ops=1, cpu_op_names=["RESHAPE"], cycles=5000, inference_ms=1.25, macs=100_000,
                        tflite_bytes=flash, accuracy={"fp32": 0.9, "int8": 0.875}, top_cycles=layers,
                        top_staging=layers)


def evaluation(labels: list[str]) -> dict:
    matrix = [[3, 0, 0], [0, 2, 1], [1, 0, 2]]
    per_class = {label: round(row[i] / sum(row), 6) for i, (label, row) in enumerate(zip(labels, matrix, strict=True))}
    scores = {"accuracy": 0.777778, "per_class": per_class, "confusion": matrix}
    return {"labels": labels, "test_clips": 9, "fp32": {**scores, "accuracy": 0.888889}, "int8": scores}


def compare_result() -> dict:
    def record(recipe, steps, int8, flash):
        return {"recipe": recipe, "steps": steps, "accuracy": {"fp32": 0.9, "int8": int8}, "tflite_bytes": 400_000,
                "zipped_bytes": 200_000, "weights": {},
                "targets": {TARGET: {"sram_bytes": 100_000, "flash_bytes": flash, "cycles": 1, "inference_ms": 1.0,
                                     "npu_ops": 40, "cpu_ops": 0}}}

    records = [record("ptq", [], 0.93, 480_000), record("prune", ["prune"], 0.925, 300_000),
               record("prune_cluster", ["prune", "cluster"], 0.925, 180_000), record("qat", ["qat"], 0.92, 479_000)]
    return {"model": "kws", "shipped": "prune_cluster", **compare_rows(records)}


def make_assets(folder: Path) -> Path:
    """Two targets, two models, the build's evaluation, a compare table, an evaluate result, last_build."""
    write_json(folder / TARGET / "memory_report.json",
               build_report(SHARED, [figures("kws", 100_000, 200_000), figures("quality", 250_000, 260_000)]))
    write_json(folder / SECOND_TARGET / "memory_report.json",
               build_report(DEDICATED, [figures("kws", 3_000, 200_000, fast=120_000),
                                        figures("quality", 50_000, 260_000, fast=260_000)]))
    for rel in (f"{TARGET}/kws/kws_model.c", f"{TARGET}/memory_report.md", "summary.md"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("generated\n")
    write_json(folder / "evaluation" / "kws.json", {"model": "kws", "recipe": "prune_cluster", "profile": "smoke",
                                                    "dataset": "builtin", "evaluation": evaluation(["a", "b", "c"])})
    heads = {h: {"precision": 0.5, "recall": 1.0, "f1": 0.666667, "roc_auc": None, "threshold": 0.25}
             for h in ("blurry", "noisy")}
    write_json(folder / "evaluation" / "quality.json",
               {"model": "quality", "recipe": "ptq", "profile": "smoke", "dataset": "builtin",
                "evaluation": {"labels": list(heads), "test_images": 24, "fp32": {"accuracy": 0.7, "per_head": heads},
                               "int8": {"accuracy": 0.666667, "per_head": heads}}})
    write_json(folder / "compare" / "kws.json", compare_result())
    write_json(folder / "compare" / ".compare-kws.stamp.json", {"key": "not a result"})
    write_json(folder / "evaluate" / "kws-builtin.json",
               {"model": "kws", "dataset": "builtin", "sets": {
                   "test": {"count": 9, "fp32": {"accuracy": 0.888889}, "int8": {"accuracy": 0.777778}},
                   "test_rec": {"count": 9, "fp32": {"accuracy": 0.666667}, "int8": {"accuracy": 0.555556}}}})
    html_report.write_last_build(folder, [StageResult("train kws", False, "up to date", 0.0),
                                          StageResult(f"compile kws ptq for {TARGET}", True, "never built", 3.21)], 4.5)
    return folder


# --------------------------------------------------------------------------- shaping, without a browser


def test_memory_bar_spans_the_budget_or_the_use_when_larger():
    colours = {"kws": "#111111"}
    parts = [{"part": "kws arena", "models": ["kws"], "bytes": 250}, {"part": "shared", "models": ["kws", "q"],
                                                                        "bytes": 250}]
    bar = html_report.memory_bar({"used_bytes": 500, "budget_bytes": 1000, "headroom_bytes": 500, "parts": parts},
                                 colours)
    assert [(s["left"], s["width"], s["colour"]) for s in bar["segments"]] == [
        (0.0, 25.0, "#111111"), (25.0, 25.0, html_report.SHARED_COLOUR)]
    assert bar["budget_at"] == 100.0 and not bar["over"] and bar["used_percent_of_budget"] == 50.0
    over = html_report.memory_bar({"used_bytes": 2000, "budget_bytes": 1000, "headroom_bytes": -1000,
                                   "parts": parts[:1]}, colours)
    assert over["over"] and over["budget_at"] == 50.0 and over["segments"][0]["width"] == 12.5


def test_page_data_comes_from_the_json_files(tmp_path):
    page = html_report.shape_page(html_report.read_assets(make_assets(tmp_path)))
    assert [t["name"] for t in page["targets"]] == sorted([TARGET, SECOND_TARGET])
    assert page["model_names"] == ["kws", "quality"]
    shared = next(t for t in page["targets"] if t["name"] == TARGET)
    # the larger arena and both models' I/O buffers (500 bytes each, 16-byte aligned as the firmware image has them)
    assert [(m["key"], m["used"]) for m in shared["memories"]] == [("sram", 250_000 + 2 * 512), ("flash", 460_000)]
    assert shared["fits"] and shared["models"][0]["top_cycles"][0]["name"] == "model/kws/conv0/BiasAdd"
    assert shared["models"][0]["npu_share"] == round(100 * 40 / 41, 1)
    assert shared["links"] == [f"{TARGET}/memory_report.json", f"{TARGET}/memory_report.md"]
    kws, quality = page["models"]
    assert [(r["source"], r["set"], r["int8"]) for r in kws["accuracy"]] == [
        ("build", "test split", 0.777778), ("evaluate builtin", "test split", 0.777778),
        ("evaluate builtin", "recording-like test set", 0.555556)]
    assert kws["confusion"]["rows"][1]["cells"][2] == {"value": 1, "shade": 0.33, "diagonal": False}
    assert kws["confusion"]["rows"][1]["cells"][1]["diagonal"] and not kws["heads"]
    assert [h["head"] for h in quality["heads"]] == ["blurry", "noisy"] and quality["confusion"] is None
    assert quality["compare"] is None and kws["profile"] == "smoke"
    (chart,) = kws["compare"]["charts"]
    assert [p["recipe"] for p in chart["points"] if p["shipped"]] == ["prune_cluster"]
    assert "0.375x the flash of ptq" in chart["reason"] and "on the accuracy/flash front and the smallest" in chart["reason"]
    assert page["stages"] == {"rows": [{"name": "train kws", "ran": False, "reason": "up to date"},
                                       {"name": f"compile kws ptq for {TARGET}", "ran": True, "reason": "never built"}],
                              "ran": 1, "up_to_date": 1}


def test_shipped_reason_says_when_another_recipe_is_better():
    result = compare_result()
    result["shipped"] = "qat"  # ptq is more accurate and barely larger; prune_cluster smaller, more accurate
    assert "Note: prune, prune_cluster is as accurate and as small or better" in html_report.shipped_reason(result,
                                                                                                           TARGET)


def test_chart_labels_do_not_overlap():
    points = [{"recipe": r, "x": 200.0 + i, "y": 100.0, "shipped": i == 0} for i, r in enumerate(["aaaa", "bbbb", "cc"])]
    html_report.place_labels(points, width=560, left_edge=64)
    boxes = []
    for p in points:
        text = len(p["recipe"] + (" (shipped)" if p["shipped"] else "")) * 6.2
        left = {"start": p["label_x"], "end": p["label_x"] - text, "middle": p["label_x"] - text / 2}[p["anchor"]]
        boxes.append((left, p["label_y"] - 10, left + text, p["label_y"] + 2))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_page_is_deterministic_self_contained_and_leaves_out_stage_times(tmp_path):
    folder = make_assets(tmp_path / "firmware_assets")
    first = html_report.write_page(folder).read_bytes()
    assert html_report.write_page(folder).read_bytes() == first
    html_report.write_last_build(folder, [StageResult("train kws", False, "up to date", 0.0),
                                          StageResult(f"compile kws ptq for {TARGET}", True, "never built", 9.99)], 99.0)
    assert html_report.write_page(folder).read_bytes() == first  # times live only in last_build.json
    text = first.decode()
    assert str(tmp_path) not in text and "http://" not in text and "https://" not in text
    assert "<script" not in text and " src=" not in text and "@import" not in text
    hrefs = [unquote(h) for h in re.findall(r'href="([^"#][^"]*)"', text)]
    assert hrefs and all((folder / h).is_file() for h in hrefs)
    for linked in ("summary.md", "last_build.json", f"{TARGET}/kws/kws_model.c", "evaluation/kws.json",
                   "compare/kws.json", "evaluate/kws-builtin.json", f"{SECOND_TARGET}/memory_report.json"):
        assert linked in hrefs, linked
    assert ".compare-kws.stamp.json" not in text


def test_extra_missing_and_over_budget_fields_still_render(tmp_path):
    folder = make_assets(tmp_path)
    path = folder / TARGET / "memory_report.json"
    rep = build_report(SHARED, [figures("kws", SHARED.sram_budget_bytes + 10, 200_000)])
    rep["models"][0].update(profile="smoke", dataset="builtin", some_future_field={"x": 1})
    rep["models"].append({"name": "mynet", "technique": "deploy", "sram_bytes": 10, "flash_bytes": 20,
                          "accuracy": {"fp32": None, "int8": None}})  # a deployed model: no top layers, no accuracy
    rep["total"]["fits"] = False
    write_json(path, rep)
    text = html_report.write_page(folder).read_text()
    assert f'<section class="target" data-target="{TARGET}" data-fits="false">' in text
    assert f'data-target="{TARGET}" data-memory="sram" data-used-bytes="{SHARED.sram_budget_bytes + 10}"' in text
    assert f"over budget: {TARGET}" in text and 'href="#model-mynet"' in text


def test_unreadable_or_missing_reports_name_the_file(tmp_path):
    with pytest.raises(BuildError, match="no firmware assets"):
        html_report.read_assets(tmp_path / "nothing")
    with pytest.raises(BuildError, match="no memory report"):
        html_report.read_assets(tmp_path)
    folder = make_assets(tmp_path)
    (folder / "compare" / "kws.json").write_text("{")
    with pytest.raises(BuildError, match=r"compare/kws.json: not valid JSON"):
        html_report.read_assets(folder)


def test_invoke_report_rewrites_the_page_and_open_prints_its_path(tmp_path):
    folder = make_assets(tmp_path / "assets")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["BROWSER"] = str(tmp_path / "no-such-browser")  # never start a real browser from the tests
    proc = subprocess.run([sys.executable, "-m", "invoke", "report", "--assets-dir", str(folder), "--open"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(folder / "index.html") in proc.stdout.splitlines()
    assert "could not start a web browser" in proc.stdout
    assert (folder / "index.html").read_bytes() == html_report.render_page(
        html_report.shape_page(html_report.read_assets(folder))).encode()


# --------------------------------------------------------------------------- a real build, in a real browser


class DataElements(HTMLParser):
    """Every element with a data-* attribute, as (tag, attributes); and every href."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if any(k.startswith("data-") for k in a):
            self.elements.append((tag, a))
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])

    def find(self, tag: str, **wanted) -> dict:
        want = {f"data-{k.replace('_', '-')}": v for k, v in wanted.items()}
        found = [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in want.items())]
        assert len(found) == 1, (tag, wanted, len(found))
        return found[0]


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
                           *args, page.as_uri()], capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def open_page(page: Path, tmp: Path, width: int = 1280) -> tuple[DataElements, str, Path, str]:
    """The rendered DOM (parsed and as text), a screenshot, and the browser's log."""
    dom = chromium(page, tmp, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / f"page-{width}.png"
    run = chromium(page, tmp, f"--screenshot={shot}", f"--window-size={width},2000", "--hide-scrollbars")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    parsed = DataElements()
    parsed.feed(dom.stdout)
    return parsed, dom.stdout, shot, dom.stderr + run.stderr


def assert_not_blank(shot: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert ImageStat.Stat(rgb.convert("L")).var[0] > 500, "screenshot looks blank"
        assert sum(rgb.getpixel((5, 5))) < 150  # the dark header was painted
        assert len(rgb.resize((320, 500)).getcolors(1 << 16) or []) > 50


def assert_page_matches_json(parsed: DataElements, folder: Path) -> None:
    reports = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/memory_report.json"))}
    assert reports
    for name, rep in reports.items():
        total = rep["total"]
        fits = "true" if total["fits"] else "false"
        assert parsed.find("section", target=name)["data-fits"] == fits
        assert parsed.find("td", target=name, fits=fits)
        for m in rep["models"]:
            cell = parsed.find("td", target=name, model=m["name"], sram_bytes=str(m["sram_bytes"]))
            assert int(cell["data-flash-bytes"]) == m["flash_bytes"]
            assert int(cell["data-dram-bytes"]) == m.get("dram_bytes", 0)
            row = parsed.find("tr", target=name, model=m["name"])
            assert (int(row["data-npu-ops"]), int(row["data-cpu-ops"])) == (m["npu_ops"], m["cpu_ops"])
        for key in ("sram", "flash", "dram"):
            if isinstance(total.get(key), dict):
                bar = parsed.find("div", target=name, memory=key)
                assert int(bar["data-used-bytes"]) == total[key]["used_bytes"]
                assert int(bar["data-budget-bytes"]) == total[key]["budget_bytes"]
                assert int(bar["data-headroom-bytes"]) == total[key]["headroom_bytes"]
    for path in sorted((folder / "evaluation").glob("*.json")):
        ev = json.loads(path.read_text())
        row = parsed.find("tr", model=ev["model"], source="build")
        assert float(row["data-int8"]) == ev["evaluation"]["int8"]["accuracy"]
        assert float(row["data-fp32"]) == ev["evaluation"]["fp32"]["accuracy"]
        for rep in reports.values():
            m = next((m for m in rep["models"] if m["name"] == ev["model"]), None)
            assert m is None or float(row["data-int8"]) == m["accuracy"]["int8"]
    stages = json.loads((folder / "last_build.json").read_text())["stages"]
    assert [a["data-stage"] for t, a in parsed.elements if t == "tr" and "data-stage" in a] == [s["name"] for s in stages]
    links = [unquote(h) for h in parsed.hrefs if not h.startswith("#")]
    assert all((folder / h).is_file() for h in links), [h for h in links if not (folder / h).is_file()]
    summarised = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix in (".json", ".md", ".c") and not p.name.startswith(".")]
    assert sorted(set(summarised) - set(links)) == []


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                                            "chromium; .ci/run installs it)")


@needs_chromium
def test_console_errors_are_caught(tmp_path):
    """The check the page tests rely on: a page that logs an error is seen to."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); notDefined();</script>")
    errors = console_errors(chromium(page, tmp_path, "--dump-dom").stderr)
    assert any("boom" in e for e in errors) and any("Uncaught" in e for e in errors)


@pytest.mark.slow
@needs_chromium
def test_default_build_page_in_a_browser(smoke_project, tmp_path):
    root, summary, _ = smoke_project
    folder = root / "firmware_assets"
    page = folder / "index.html"
    assert page.read_bytes() == html_report.render_page(html_report.shape_page(html_report.read_assets(folder))).encode()
    parsed, dom, shot, log = open_page(page, tmp_path)
    assert not console_errors(log), console_errors(log)
    assert_not_blank(shot)
    assert_page_matches_json(parsed, folder)
    assert {m["name"] for m in json.loads((folder / TARGET / "memory_report.json").read_text())["models"]} \
        == {"kws", "quality"}
    assert 'class="confusion"' in dom and 'class="heads"' in dom  # kws matrix, quality heads
    _, _, phone, log = open_page(page, tmp_path, width=390)
    assert not console_errors(log)
    assert_not_blank(phone)


@pytest.mark.slow
@needs_chromium
def test_page_after_a_second_target_shows_every_target(smoke_project, tmp_path):
    from npubuild.pipeline import build

    root, _, _ = smoke_project
    lines: list[str] = []
    summary = build(root, model="all", target=SECOND_TARGET, profile="smoke", log=lines.append)
    folder = root / "firmware_assets"
    targets = sorted(p.parent.name for p in folder.glob("*/memory_report.json"))
    assert len(targets) >= 2 and {TARGET, SECOND_TARGET} <= set(targets)
    parsed, dom, shot, log = open_page(folder / "index.html", tmp_path)
    assert not console_errors(log), console_errors(log)
    assert_not_blank(shot)
    assert_page_matches_json(parsed, folder)
    for name in targets:
        assert f'href="#target-{name}"' in dom
    ran = {a["data-stage"]: a["data-ran"] for t, a in parsed.elements if t == "tr" and "data-stage" in a}
    assert ran == {r.name: "true" if r.ran else "false" for r in summary.results}
    assert ran["train kws"] == "false" and ran[f"report {SECOND_TARGET}"] == "true"
