"""How reports write figures: percentages, KiB and Vela's layer names, in Markdown, HTML and on the
terminal alike. Pure functions, no project imports."""

from __future__ import annotations


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with `digits` decimals; "-" for none."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def fraction(value: float | None) -> str:
    """A fraction (an accuracy) with four decimals; "-" for none (a deployed model has no accuracy)."""
    return "-" if value is None else f"{value:.4f}"


def kib(n: int | float | None) -> str:
    """Bytes in KiB with one decimal and thousands separators; "-" for none."""
    return "-" if n is None else f"{n / 1024:,.1f}"


def short_layer(name: str, width: int, ellipsis: str) -> str:
    """Vela joins every fused TFLite tensor name of a layer with ';': keep the last, cut from the left
    to at most `width` characters, `ellipsis` included."""
    name = name.split(";")[-1]
    return name if len(name) <= width else ellipsis + name[-(width - len(ellipsis)):]
