"""How reports write figures: the one home of the percent, KiB and layer-name helpers."""

from __future__ import annotations

from npubuild.report_text import kib, percent, short_layer


def test_percent_and_kib_say_none_as_a_dash():
    assert [percent(0.82891, 1), percent(0.82891), percent(1.0, 0), percent(None)] == ["82.9%", "82.89%", "100%", "-"]
    assert [kib(0), kib(1536), kib(2_000_000), kib(None)] == ["0.0", "1.5", "1,953.1", "-"]


def test_short_layer_keeps_the_last_fused_name_within_the_width():
    """The memory report's Markdown cuts with "..." (56 wide), the HTML page with "…" (48 wide)."""
    fused = "model/conv_1/Relu;model/conv_1/BiasAdd;model/block_3/depthwise/Conv2D"
    assert short_layer("a;b;dense/MatMul", 20, "...") == "dense/MatMul"
    assert short_layer(fused, 30, "...") == "model/block_3/depthwise/Conv2D"
    assert short_layer(fused, 20, "...") == ".../depthwise/Conv2D"
    assert short_layer(fused, 20, "…") == "…_3/depthwise/Conv2D"
    assert len(short_layer(fused, 20, "…")) == 20
