"""Report maths: where each model's bytes go on a target, totals, headroom, and the budget gate."""

from __future__ import annotations

import pytest

from npubuild.config import load_target
from npubuild.errors import BuildError
from npubuild.report import (
    ModelFigures,
    build_report,
    check_budget,
    over_budget,
    render_chart,
    render_markdown,
)

from .conftest import ROOT, TARGET

SHARED = load_target(ROOT / "targets" / f"{TARGET}.toml")  # models run one at a time
SUMMED = load_target(ROOT / "targets" / "corstone-310-u55-256.toml")  # models run concurrently
DEDICATED = load_target(ROOT / "targets" / "corstone-300-u65-256.toml")  # arena in DRAM, fast scratch in SRAM


def figures(name, arena, flash, io=500, fast=0):
    return ModelFigures(name=name, technique="ptq", sram_bytes=arena, flash_bytes=flash,
                        vela_sram_bytes=arena - 2048, vela_flash_bytes=flash - 100, arena_bytes=arena,
                        fast_scratch_bytes=fast, io_bytes=io, npu_ops=41, cpu_ops=0, cpu_op_names=[], cycles=1000,
                        inference_ms=1.5, macs=10, tflite_bytes=flash, accuracy={"fp32": 0.9, "int8": 0.89})


TWO = [figures("a", 100_000, 500_000, io=502), figures("b", 50_000, 250_000, io=49_154)]


def test_models_run_one_at_a_time_share_the_arena_and_keep_their_io():
    rep = build_report(SHARED, TWO)
    total = rep["total"]
    # largest arena + both models' I/O buffers, each 16-byte aligned as the firmware image lays them out
    assert total["sram_bytes"] == 100_000 + 512 + 49_168
    assert [p["kind"] for p in total["sram"]["parts"]] == ["arena", "io", "io"]
    assert total["flash_bytes"] == 750_000 and total["fits"] is True
    assert total["sram"]["headroom_bytes"] == SHARED.sram_budget_bytes - total["sram_bytes"]
    assert total["flash"]["headroom_percent"] == round(100 * (SHARED.flash_budget_bytes - 750_000)
                                                       / SHARED.flash_budget_bytes, 2)
    assert [m["name"] for m in rep["models"]] == ["a", "b"]
    assert total["sram"]["parts"][0]["part"] == "arena shared by a, b (largest: a)"
    check_budget(rep)


def test_concurrent_models_sum_their_arenas():
    rep = build_report(SUMMED, TWO)
    assert rep["total"]["sram_bytes"] == 150_000
    assert [p["part"] for p in rep["total"]["sram"]["parts"]] == ["a arena", "b arena"]


def test_one_model_alone_is_just_its_arena():
    assert build_report(SHARED, TWO[:1])["total"]["sram_bytes"] == 100_000


def test_dedicated_sram_puts_arena_and_weights_in_dram():
    models = [figures("a", 3_000, 500_000, fast=130_000), figures("b", 2_600, 250_000, fast=200_000)]
    total = build_report(DEDICATED, models)["total"]
    assert total["sram_bytes"] == 200_000 + 2 * 512  # shared fast scratch + I/O buffers (16-byte aligned)
    assert total["dram_bytes"] == 3_000 + 750_000  # shared arena + both models' weights
    assert total["flash_bytes"] == 750_000
    assert total["sram"]["budget_bytes"] == 393_216 and total["fits"] is True


def test_over_budget_names_models_memory_and_bytes():
    rep = build_report(SHARED, [figures("kws", SHARED.sram_budget_bytes + 10, 1000)])
    assert rep["total"]["fits"] is False
    (problem,) = over_budget(rep)
    assert "SRAM over budget by 10 bytes" in problem and "kws arena" in problem
    with pytest.raises(BuildError, match="SRAM over budget by 10 bytes"):
        check_budget(rep)
    assert "**Fits: NO**" in render_markdown(rep, [figures("kws", SHARED.sram_budget_bytes + 10, 1000)])


def test_chart_is_a_deterministic_png(tmp_path):
    rep = build_report(DEDICATED, [figures("a", 3_000, 500_000, fast=130_000)])
    render_chart(rep, tmp_path / "one.png")
    render_chart(rep, tmp_path / "two.png")
    data = (tmp_path / "one.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == (tmp_path / "two.png").read_bytes()


def test_invoke_report_check_exits_non_zero_naming_model_memory_and_bytes(tmp_path):
    import json
    import subprocess
    import sys

    over = [figures("kws", SHARED.sram_budget_bytes + 1234, 1000)]
    folder = tmp_path / TARGET
    folder.mkdir()
    (folder / "memory_report.json").write_text(json.dumps(build_report(SHARED, over)))
    command = [sys.executable, "-m", "invoke", "report", "--target", TARGET, "--assets-dir", str(tmp_path)]
    proc = subprocess.run([*command, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "SRAM over budget by 1234 bytes" in line and "kws arena" in line
    assert subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode == 0  # without --check: a warning
    (folder / "memory_report.json").write_text(json.dumps(build_report(SHARED, [figures("kws", 1000, 1000)])))
    assert subprocess.run([*command, "--check"], cwd=ROOT, capture_output=True, text=True).returncode == 0


def test_compare_ratio_on_a_target_whose_weights_are_in_dram():
    """Vela reports no flash when the weights live in DRAM (U65 Dedicated_Sram): the ratio is the model's."""
    from npubuild.compare import compare_rows

    def record(name, flash, model):
        return {"recipe": name, "steps": [], "accuracy": {"fp32": 0.9, "int8": 0.9}, "tflite_bytes": 100,
                "zipped_bytes": 50, "weights": {},
                "targets": {"u65": {"sram_bytes": 1, "flash_bytes": flash, "model_bytes": model, "cycles": 1,
                                    "inference_ms": 1.0, "npu_ops": 1, "cpu_ops": 0}}}

    rows = compare_rows([record("ptq", 0, 400), record("prune_cluster", 0, 150)])
    assert rows["recipes"][1]["targets"]["u65"]["flash_ratio"] == 0.375


def test_invoke_report_decides_by_the_kind_of_error_not_its_words(tmp_path):
    """Only a budget overrun is a warning without --check; any other error fails, whatever its text says
    (a target named "over budget" once passed as a warning because its error mentioned those words)."""
    import json
    import subprocess
    import sys

    folder = tmp_path / TARGET
    folder.mkdir()
    (folder / "memory_report.json").write_text(json.dumps(build_report(SHARED, [figures("kws", 1000, 1000)])))
    command = [sys.executable, "-m", "invoke", "report", "--target", "over budget", "--assets-dir", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "over budget.toml: no such target" in line
