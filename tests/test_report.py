"""Report maths: totals, headroom, and the budget gate's message."""

from __future__ import annotations

import pytest

from npubuild.config import load_target
from npubuild.errors import BuildError
from npubuild.report import ModelFigures, build_report, check_budget, over_budget, render_markdown

from .conftest import ROOT, TARGET

T = load_target(ROOT / "targets" / f"{TARGET}.toml")


def figures(name, sram, flash):
    return ModelFigures(name=name, technique="ptq", sram_bytes=sram, flash_bytes=flash, vela_sram_bytes=sram - 2048,
                        vela_flash_bytes=flash - 100, arena_bytes=sram, npu_ops=41, cpu_ops=0, cpu_op_names=[],
                        cycles=1000, inference_ms=1.5, macs=10, tflite_bytes=flash, accuracy={"fp32": 0.9, "int8": 0.89})


def test_totals_and_headroom():
    rep = build_report(T, [figures("a", 100_000, 500_000), figures("b", 50_000, 250_000)])
    assert rep["total"]["sram_bytes"] == 150_000 and rep["total"]["flash_bytes"] == 750_000
    assert rep["total"]["fits"] is True
    assert rep["total"]["sram"]["headroom_bytes"] == T.sram_budget_bytes - 150_000
    assert rep["total"]["flash"]["headroom_percent"] == round(100 * (T.flash_budget_bytes - 750_000) / T.flash_budget_bytes, 2)
    assert [m["name"] for m in rep["models"]] == ["a", "b"]
    check_budget(rep)
    assert "**Fits: yes**" in render_markdown(rep, [figures("a", 100_000, 500_000), figures("b", 50_000, 250_000)])


def test_over_budget_names_models_memory_and_bytes():
    rep = build_report(T, [figures("kws", T.sram_budget_bytes + 10, 1000)])
    assert rep["total"]["fits"] is False
    (problem,) = over_budget(rep)
    assert "SRAM over budget by 10 bytes" in problem and "kws" in problem
    with pytest.raises(BuildError, match="SRAM over budget by 10 bytes"):
        check_budget(rep)
