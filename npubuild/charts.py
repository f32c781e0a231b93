"""Charts drawn with matplotlib and written as deterministic PNG files (no software tag, no date)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write `fig` to `path` atomically as a PNG without metadata that changes from run to run, and
    close it."""
    from npubuild.stages import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    pyplot().close(fig)
