"""The deployment tree as data: named optimization steps, and recipes as lists of steps.

Every recipe ends in a full-INT8 TFLite file: post-training quantization,
unless its last step is quantization-aware training.
"""

STEPS = ("prune", "cluster", "qat")

RECIPES: dict[str, tuple[str, ...]] = {
    "ptq": (),
    "qat": ("qat",),
    "prune": ("prune",),
    "pqat": ("prune", "qat"),
    "cluster": ("cluster",),
    "cqat": ("cluster", "qat"),
    "prune_cluster": ("prune", "cluster"),
    "pcqat": ("prune", "cluster", "qat"),
}


def chain_name(steps: tuple[str, ...]) -> str:
    """Folder name of the model after `steps`, e.g. "prune+cluster"."""
    return "+".join(steps) if steps else "fp32"
