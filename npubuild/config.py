"""Model recipes (`models/*.toml`) and deployment targets (`targets/*.toml`) as validated data.

Every problem found while loading names the file and the field.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import BuildError
from .techniques import RECIPES

ACCELERATORS = (
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
    "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
)
PROFILES = ("smoke", "default")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BuildError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise BuildError(f"{path}: not valid TOML: {e}") from None


def _take(path: Path, table: dict[str, Any], cls: type, prefix: str = "", **extra: Any) -> Any:
    """Build dataclass `cls` from `table`, rejecting unknown and missing keys and wrong types."""
    names = {f.name: f for f in fields(cls) if f.name not in extra}
    for key in table:
        if key not in names:
            raise BuildError(f"{path}: unknown field '{prefix}{key}'")
    values = {}
    for name, f in names.items():
        if name not in table:
            if f.default is not MISSING:
                continue
            raise BuildError(f"{path}: missing field '{prefix}{name}'")
        value = table[name]
        expected = f.type if isinstance(f.type, str) else f.type.__name__
        if not _has_type(value, expected):
            raise BuildError(f"{path}: field '{prefix}{name}' must be {expected}, got {value!r}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values, **extra)


def _has_type(value: Any, expected: str) -> bool:
    checks = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    }
    return checks.get(expected, lambda v: True)(value)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A deployment target: the NPU, how Vela sees the memory system, and the budgets."""

    name: str
    description: str
    accelerator: str
    system_config: str
    memory_mode: str
    sram_budget_bytes: int
    flash_budget_bytes: int
    tflm_overhead_bytes: int
    model_section: str
    arena_section: str
    cpu_clock_hz: int
    npu_clock_hz: int

    @property
    def npu_family(self) -> str:
        return self.accelerator.split("-")[1]  # "u55"

    def vela_params(self) -> dict[str, str]:
        """What Vela's output depends on (the budgets do not change the compiled model)."""
        return {"accelerator": self.accelerator, "system_config": self.system_config,
                "memory_mode": self.memory_mode}


def load_target(path: Path) -> Target:
    table = read_toml(path)
    target = _take(path, table, Target)
    if target.name != path.stem:
        raise BuildError(f"{path}: field 'name' is {target.name!r} but the file is named {path.stem!r}")
    if target.accelerator not in ACCELERATORS:
        raise BuildError(f"{path}: field 'accelerator' is {target.accelerator!r}; "
                         f"Vela knows {', '.join(ACCELERATORS)}")
    family = target.npu_family.upper()
    if not target.system_config.startswith(f"Ethos_{family}_"):
        raise BuildError(f"{path}: field 'system_config' {target.system_config!r} is not an "
                         f"Ethos-{family} system config (accelerator {target.accelerator})")
    for name in ("sram_budget_bytes", "flash_budget_bytes", "cpu_clock_hz", "npu_clock_hz"):
        if getattr(target, name) <= 0:
            raise BuildError(f"{path}: field '{name}' must be positive")
    if target.tflm_overhead_bytes < 0:
        raise BuildError(f"{path}: field 'tflm_overhead_bytes' must not be negative")
    return target


def find_targets(root: Path) -> list[Path]:
    return sorted((root / "targets").glob("*.toml"))


def resolve_targets(root: Path, names: str) -> list[Target]:
    """`names` is a target name, several separated by commas, or "all"."""
    paths = find_targets(root)
    if names != "all":
        known = {p.stem: p for p in paths}
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        for name in wanted:
            if name not in known:
                raise BuildError(f"{root / 'targets' / (name + '.toml')}: no such target "
                                 f"(known: {', '.join(known) or 'none'})")
        paths = [known[n] for n in dict.fromkeys(wanted)]
    return [load_target(p) for p in paths]


# --------------------------------------------------------------------------- model recipes


@dataclass(frozen=True)
class FrontEnd:
    """MFCC front end; the same numbers are exported to firmware."""

    sample_rate: int
    clip_samples: int
    window_samples: int
    stride_samples: int
    fft_size: int
    mel_bins: int
    lower_hz: float
    upper_hz: float
    num_mfcc: int

    @property
    def num_frames(self) -> int:
        return 1 + (self.clip_samples - self.window_samples) // self.stride_samples


@dataclass(frozen=True)
class Profile:
    """How big the run is: dataset sizes and training effort."""

    name: str
    train_per_class: int
    val_per_class: int
    test_per_class: int
    epochs: int
    batch_size: int
    learning_rate: float
    # Fine-tuning of each optimization step: epochs, and at most this many training
    # clips per epoch (0: all).
    prune_epochs: int
    cluster_epochs: int
    qat_epochs: int
    finetune_samples: int

    def step_epochs(self, step: str) -> int:
        """Fine-tuning epochs of an optimization step ("prune", "cluster" or "qat")."""
        return {"prune": self.prune_epochs, "cluster": self.cluster_epochs, "qat": self.qat_epochs}[step]


@dataclass(frozen=True)
class OptimizeSettings:
    """Parameters of the optimization steps (tfmot), shared by every profile."""

    target_sparsity: float
    prune_updates: int  # how many times the polynomial schedule raises sparsity
    prune_frequency: int  # steps between pruning updates; 0 derives it from prune_updates
    prune_learning_rate: float
    clusters: int
    centroid_init: str  # kmeans_plus_plus | linear | density_based
    cluster_learning_rate: float
    qat_learning_rate: float


CENTROID_INITS = ("kmeans_plus_plus", "linear", "density_based")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    architecture: str
    labels: tuple[str, ...]
    unknown_words: tuple[str, ...]
    ship: str
    seed: int
    frontend: FrontEnd
    optimize: OptimizeSettings
    profiles: dict[str, Profile]
    source: Path

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if not label.startswith("_"))

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise BuildError(f"{self.source}: no profile {name!r} (has {', '.join(self.profiles)})")
        return self.profiles[name]


@dataclass(frozen=True)
class _RecipeTop:
    name: str
    description: str
    architecture: str
    labels: tuple[str, ...]
    unknown_words: tuple[str, ...]
    ship: str
    seed: int


ARCHITECTURES = ("ds_cnn_l",)


def load_recipe(path: Path) -> Recipe:
    table = dict(read_toml(path))
    frontend_table = table.pop("frontend", None)
    optimize_table = table.pop("optimize", None)
    profiles_table = table.pop("profiles", None)
    for name, sub in (("frontend", frontend_table), ("optimize", optimize_table)):
        if sub is None:
            raise BuildError(f"{path}: missing table '[{name}]'")
    if not profiles_table:
        raise BuildError(f"{path}: missing table '[profiles.<name>]'")
    top = _take(path, table, _RecipeTop)
    frontend = _take(path, frontend_table, FrontEnd, prefix="frontend.")
    optimize = _take(path, optimize_table, OptimizeSettings, prefix="optimize.")
    if not 0.0 < optimize.target_sparsity < 1.0:
        raise BuildError(f"{path}: field 'optimize.target_sparsity' must be between 0 and 1")
    if optimize.clusters < 2:
        raise BuildError(f"{path}: field 'optimize.clusters' must be at least 2")
    if optimize.centroid_init not in CENTROID_INITS:
        raise BuildError(f"{path}: field 'optimize.centroid_init' {optimize.centroid_init!r} is unknown "
                         f"(known: {', '.join(CENTROID_INITS)})")
    profiles = {}
    for pname, ptable in profiles_table.items():
        if pname not in PROFILES:
            raise BuildError(f"{path}: unknown profile 'profiles.{pname}' (known: {', '.join(PROFILES)})")
        profiles[pname] = _take(path, ptable, Profile, prefix=f"profiles.{pname}.", name=pname)
    if top.name != path.stem:
        raise BuildError(f"{path}: field 'name' is {top.name!r} but the file is named {path.stem!r}")
    if top.architecture not in ARCHITECTURES:
        raise BuildError(f"{path}: field 'architecture' {top.architecture!r} is unknown "
                         f"(known: {', '.join(ARCHITECTURES)})")
    if top.ship not in RECIPES:
        raise BuildError(f"{path}: field 'ship' names unknown technique {top.ship!r} "
                         f"(known: {', '.join(RECIPES)})")
    if len(set(top.labels)) != len(top.labels):
        raise BuildError(f"{path}: field 'labels' has duplicates")
    if frontend.num_frames <= 0 or frontend.fft_size < frontend.window_samples:
        raise BuildError(f"{path}: table 'frontend' gives no frames (window longer than clip or FFT)")
    return Recipe(**vars(top), frontend=frontend, optimize=optimize, profiles=profiles, source=path)


def resolve_models(root: Path, name: str) -> list[Recipe]:
    """`name` is a model name or "all"."""
    paths = sorted((root / "models").glob("*.toml"))
    if name != "all":
        paths = [p for p in paths if p.stem == name]
        if not paths:
            raise BuildError(f"{root / 'models' / (name + '.toml')}: no such model recipe")
    return [load_recipe(p) for p in paths]
