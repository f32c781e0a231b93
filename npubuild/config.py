"""Model recipes (`models/*.toml`) and deployment targets (`targets/*.toml`) as validated data.

Every problem found while loading names the file and the field.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from npubuild.errors import BuildError
from npubuild.optimization_recipes import RECIPES

ACCELERATORS = (
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
    "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
)
PROFILES = ("smoke", "fast", "default")


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
        "int | None": lambda v: isinstance(v, int) and not isinstance(v, bool),
    }
    return checks.get(expected, lambda v: True)(value)


# --------------------------------------------------------------------------- targets


MEMORIES = ("sram", "flash", "dram")
MODEL_SCHEDULES = ("one_at_a_time", "concurrently")


@dataclass(frozen=True)
class MemoryRegion:
    """One memory of the board, and the part of it the ML models may use."""

    kind: str  # sram | flash | dram
    region: str  # what it is on the board, e.g. "ISRAM0 + ISRAM1 (0x31000000)"
    bytes: int
    ml_share: float  # fraction of `bytes` budgeted for the models (the rest is the application's)
    # Address of the region's first byte, as the CPU sees it (the firmware image's linker script puts
    # the models' part, `budget_bytes` long, there); None: the target cannot be linked.
    origin: int | None = None

    @property
    def budget_bytes(self) -> int:
        return int(self.bytes * self.ml_share)


@dataclass(frozen=True)
class ImageRegion:
    """Where the firmware test image puts its own code or data (`[image.code]`, `[image.data]`): memory
    outside the models' budgets."""

    kind: str  # code | data
    region: str
    origin: int
    bytes: int


@dataclass(frozen=True)
class ImageLayout:
    """`[image]` of a target: the firmware test image's own memory, and the QEMU machine that emulates
    the board ("" when none does)."""

    code: ImageRegion
    data: ImageRegion
    qemu_machine: str = ""
    stack_bytes: int = 32_768


@dataclass(frozen=True)
class Target:
    """A deployment target: the NPU, how Vela sees the memory system, and the budgets."""

    name: str
    description: str
    accelerator: str
    system_config: str
    memory_mode: str
    tflm_overhead_bytes: int
    model_section: str
    arena_section: str
    cpu_clock_hz: int
    npu_clock_hz: int
    # Do the models run one at a time (their arenas can share one buffer) or concurrently?
    models_run: str
    source: Path
    memory: dict  # kind -> MemoryRegion
    arena_memory: str  # where Vela puts the feature maps (the TFLM arena): "sram" or "dram"
    model_memory: str  # where the NPU reads weights from at run time: "flash" or "dram"
    fast_memory: bool  # a separate NPU scratch buffer in SRAM (Dedicated_Sram memory modes)
    vela_config: str = ""  # a Vela .ini beside this file; empty: Vela's bundled Arm/vela.ini
    fast_memory_section: str = ".bss.ethosu_fast_memory"
    image: ImageLayout | None = None  # `[image]`: how the firmware test image is linked (None: it is not)

    @property
    def npu_family(self) -> str:
        return self.accelerator.split("-")[1]  # "u55"

    @property
    def vela_ini(self) -> Path:
        from npubuild.vela_ini import arm_config_path

        return self.source.parent / self.vela_config if self.vela_config else arm_config_path()

    def budget(self, kind: str) -> int:
        region = self.memory.get(kind)
        return region.budget_bytes if region else 0

    @property
    def sram_budget_bytes(self) -> int:
        return self.budget("sram")

    @property
    def flash_budget_bytes(self) -> int:
        return self.budget("flash")

    def vela_params(self) -> dict[str, str]:
        """What Vela's output depends on (the budgets do not change the compiled model)."""
        return {"accelerator": self.accelerator, "system_config": self.system_config,
                "memory_mode": self.memory_mode}


ADDRESS_SPACE = 1 << 32  # the Cortex-M's
_PORT_MEMORY = {"Sram": "sram", "Dram": "dram", "OnChipFlash": "flash", "OffChipFlash": "flash"}


def _load_memory(path: Path, table: Any) -> dict[str, MemoryRegion]:
    if not isinstance(table, dict):
        raise BuildError(f"{path}: missing table '[memory.sram]' (and '[memory.flash]')")
    memory = {}
    for kind, sub in table.items():
        if kind not in MEMORIES:
            raise BuildError(f"{path}: unknown field 'memory.{kind}' (known: {', '.join(MEMORIES)})")
        if not isinstance(sub, dict):
            raise BuildError(f"{path}: field 'memory.{kind}' must be a table")
        region = _take(path, sub, MemoryRegion, prefix=f"memory.{kind}.", kind=kind)
        if region.bytes <= 0:
            raise BuildError(f"{path}: field 'memory.{kind}.bytes' must be positive")
        if not 0.0 < region.ml_share <= 1.0:
            raise BuildError(f"{path}: field 'memory.{kind}.ml_share' must be in (0, 1]")
        _check_span(path, f"memory.{kind}", region.origin, region.bytes)
        memory[kind] = region
    for kind in ("sram", "flash"):
        if kind not in memory:
            raise BuildError(f"{path}: missing field 'memory.{kind}'")
    return memory


def _check_span(path: Path, field: str, origin: int | None, size: int) -> None:
    if origin is not None and not (0 <= origin and origin + size <= ADDRESS_SPACE):
        raise BuildError(f"{path}: field '{field}.origin' {origin:#x} puts the region outside the 32-bit "
                         f"address space (it is {size} bytes long)")


def _load_image(path: Path, table: Any, memory: dict[str, MemoryRegion]) -> ImageLayout | None:
    """`[image]`: the test image's code and data regions. Every memory region then needs its origin,
    and no two of the regions the image uses (the models' part of each memory, code, data) overlap."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise BuildError(f"{path}: field 'image' must be a table")
    regions = {}
    for kind in ("code", "data"):
        sub = table.get(kind)
        if not isinstance(sub, dict):
            raise BuildError(f"{path}: missing field 'image.{kind}' (a table with region, origin, bytes)")
        region = _take(path, sub, ImageRegion, prefix=f"image.{kind}.", kind=kind)
        if region.bytes <= 0:
            raise BuildError(f"{path}: field 'image.{kind}.bytes' must be positive")
        _check_span(path, f"image.{kind}", region.origin, region.bytes)
        regions[kind] = region
    layout = _take(path, {k: v for k, v in table.items() if k not in regions}, ImageLayout, prefix="image.",
                   **regions)
    if layout.stack_bytes <= 0 or layout.stack_bytes >= layout.data.bytes:
        raise BuildError(f"{path}: field 'image.stack_bytes' must be positive and less than image.data.bytes")
    spans = [(f"image.{k}", r.origin, r.bytes) for k, r in regions.items()]
    for kind, region in memory.items():
        if region.origin is None:
            raise BuildError(f"{path}: missing field 'memory.{kind}.origin' (the firmware image of [image] "
                             f"puts the models' part of {kind} there)")
        spans.append((f"memory.{kind}", region.origin, region.budget_bytes))
    spans.sort(key=lambda s: s[1])
    for (name_a, start_a, size_a), (name_b, start_b, _) in zip(spans, spans[1:], strict=False):
        if start_a + size_a > start_b:
            raise BuildError(f"{path}: field '{name_b}.origin' {start_b:#x} overlaps {name_a} "
                             f"({start_a:#x}, {size_a} bytes used by the image)")
    return layout


def load_target(path: Path) -> Target:
    """Load and check a target, including against the Vela .ini it names, before Vela runs."""
    from npubuild.vela_ini import VelaIni, port

    table = dict(read_toml(path))
    memory = _load_memory(path, table.pop("memory", None))
    image = _load_image(path, table.pop("image", None), memory)
    draft = _take(path, table, Target, source=path, memory=memory, arena_memory="", model_memory="",
                  fast_memory=False, image=image)
    if draft.name != path.stem:
        raise BuildError(f"{path}: field 'name' is {draft.name!r} but the file is named {path.stem!r}")
    if draft.accelerator not in ACCELERATORS:
        raise BuildError(f"{path}: field 'accelerator' is {draft.accelerator!r}; "
                         f"Vela knows {', '.join(ACCELERATORS)}")
    if draft.models_run not in MODEL_SCHEDULES:
        raise BuildError(f"{path}: field 'models_run' is {draft.models_run!r}; "
                         f"expected {' or '.join(MODEL_SCHEDULES)}")
    for name in ("cpu_clock_hz", "npu_clock_hz"):
        if getattr(draft, name) <= 0:
            raise BuildError(f"{path}: field '{name}' must be positive")
    if draft.tflm_overhead_bytes < 0:
        raise BuildError(f"{path}: field 'tflm_overhead_bytes' must not be negative")
    if draft.vela_config and not (path.parent / draft.vela_config).is_file():
        raise BuildError(f"{path}: field 'vela_config' names {draft.vela_config!r}, "
                         f"which is not a file beside the target")
    ini = VelaIni(draft.vela_ini)
    ini_name = draft.vela_config or "Vela's Arm/vela.ini"
    system = ini.system_config(draft.system_config)
    if system is None:
        raise BuildError(f"{path}: field 'system_config' {draft.system_config!r} is not in "
                         f"{ini_name} "
                         f"(has {', '.join(ini.names('System_Config'))})")
    family = draft.npu_family.upper()
    named = next((f for f in ("U55", "U65", "U85") if draft.system_config.startswith(f"Ethos_{f}_")), None)
    if named != family:
        what = f"an Ethos-{named} system config" if named else "not named Ethos_<U55|U65|U85>_..."
        raise BuildError(f"{path}: field 'system_config' {draft.system_config!r} is {what}, "
                         f"but the accelerator is {draft.accelerator}")
    mode = ini.memory_mode(draft.memory_mode)
    if mode is None:
        raise BuildError(f"{path}: field 'memory_mode' {draft.memory_mode!r} is not in "
                         f"{ini_name} (has {', '.join(ini.names('Memory_Mode'))})")
    arena_port, const_port = port(system, mode.arena_mem_area), port(system, mode.const_mem_area)
    if arena_port not in ("Sram", "Dram") or port(system, mode.cache_mem_area) != "Sram":
        raise BuildError(f"{path}: field 'memory_mode' {draft.memory_mode!r} puts the tensor arena in "
                         f"{arena_port or 'nothing'} ({mode.arena_mem_area}) on system config "
                         f"{draft.system_config!r}; Vela needs it in Sram or Dram")
    if const_port not in ("Dram", "OnChipFlash", "OffChipFlash"):
        raise BuildError(f"{path}: field 'memory_mode' {draft.memory_mode!r} puts the weights in "
                         f"{const_port or 'nothing'} on system config {draft.system_config!r}; "
                         f"Vela needs Dram or flash")
    if abs(system.core_clock_hz - draft.npu_clock_hz) > 0.5:
        raise BuildError(f"{path}: field 'npu_clock_hz' is {draft.npu_clock_hz} but system config "
                         f"{draft.system_config!r} clocks the NPU at {system.core_clock_hz:.0f} Hz "
                         f"(Vela's timings use that); give the target a vela_config of its own")
    arena_memory, model_memory = _PORT_MEMORY[arena_port], _PORT_MEMORY[const_port]
    for needed in {arena_memory, model_memory} - set(memory):
        raise BuildError(f"{path}: missing field 'memory.{needed}' (memory mode {draft.memory_mode!r} "
                         f"on {draft.system_config!r} uses it)")
    return replace(draft, arena_memory=arena_memory, model_memory=model_memory,
                   fast_memory=mode.arena_mem_area != mode.cache_mem_area)


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
    epochs: int
    batch_size: int
    learning_rate: float
    # Fine-tuning of each optimization step: epochs, and at most this many training
    # clips per epoch (0: all).
    prune_epochs: int
    cluster_epochs: int
    qat_epochs: int
    finetune_samples: int
    # Dataset size: keyword spotting counts clips per class and split; image quality, images per split.
    train_per_class: int = 0
    val_per_class: int = 0
    test_per_class: int = 0
    train_images: int = 0
    val_images: int = 0
    test_images: int = 0
    # Streaming-detector tuning (keyword spotting): validation clips per keyword, unknown-word clips,
    # and seconds of noise alone.
    detector_clips_per_keyword: int = 0
    detector_unknown_clips: int = 0
    detector_noise_seconds: int = 0
    # Keyword spotting, built-in data: renderings of each training clip (one per epoch, cycling).
    train_variants: int = 1
    # Training samples whose statistics replace each batch normalization layer's moving mean and
    # variance after training and after each pruning or clustering fine-tune (0: keep the moving
    # averages; `train.recalibrate_batchnorm`).
    batchnorm_samples: int = 0

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
class ImageSettings:
    """Input of an image model, and the backbone's width."""

    height: int
    width: int
    alpha: float  # MobileNetV2 width multiplier
    # How a photo reaches the model (`kinds/quality/views.py`): every head reads the whole view (the
    # centre square at height x width); with detail_side > 0, the heads in detail_heads read the detail
    # view instead (the centre square at detail_side x detail_side, its centre height x width pixels).
    detail_side: int = 0
    detail_heads: tuple[str, ...] = ()


@dataclass(frozen=True)
class KerasSettings:
    """`[keras]` of a recipe of kind "keras": your own model and data (paths relative to the recipe)."""

    model: str  # a saved tf_keras model (.h5 or .keras), or "file.py:function" returning an uncompiled one
    data: str  # an .npz with x_/y_ train, val, test; a folder with one subfolder per class; or "file.py:function"
    image_size: int = 0  # for a folder of images: the square size they are resized to (centre crop first)


@dataclass(frozen=True)
class MixSettings:
    """`[mix]` of a recipe whose kind can train on a labelled folder together with its built-in data
    (keyword spotting: your recordings and the voice bank; `invoke build --data-dir DIR --voice-bank`)."""

    voice_bank: bool = False  # a --data-dir build mixes in the built-in data without being asked
    real_share: float = 0.5  # share of each training epoch drawn from the folder's clips


@dataclass(frozen=True)
class DetectorSettings:
    """Streaming keyword detection (`[detector]`), as firmware and `invoke listen` run it: the model
    runs every `stride_ms` on the last second of audio; a keyword is reported when its posterior,
    averaged over the last `average_windows` windows, reaches `threshold`; then nothing for
    `refractory_ms`."""

    stride_ms: int  # a multiple of the front end's frame stride (20 ms)
    average_windows: int
    threshold: float  # on the averaged posterior, in (0, 1]
    refractory_ms: int


DETECTOR_FIELDS = ("stride_ms", "average_windows", "threshold", "refractory_ms")


@dataclass(frozen=True)
class DetectorTuning:
    """`[detector]` of a keyword-spotting recipe: the build tunes the streaming detector itself
    (`invoke build`'s detector stage, on validation speech in streams and on noise); any of the four
    settings given here is fixed instead of searched."""

    stride_ms: int | None = None
    average_windows: int | None = None
    threshold: float | None = None
    refractory_ms: int | None = None
    false_alarm_limit_per_hour: float = 1.0

    @property
    def fixed(self) -> dict:
        return {name: getattr(self, name) for name in DETECTOR_FIELDS if getattr(self, name) is not None}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    kind: str  # a registered kind (kinds.KINDS) or "module:Class" (kinds.get_kind)
    architecture: str
    labels: tuple[str, ...]  # output names: classes (keyword spotting) or heads (image quality)
    unknown_words: tuple[str, ...]
    ship: str
    seed: int
    frontend: FrontEnd | None
    image: ImageSettings | None
    optimize: OptimizeSettings
    profiles: dict[str, Profile]
    source: Path
    detector: DetectorTuning | None = None  # keyword spotting only; None: no streaming detector
    keras: KerasSettings | None = None  # kind "keras": the user's model and data
    mix: MixSettings = MixSettings()  # a labelled folder with the built-in data (kinds that mix them)
    unknown_weight: float = 1.0  # keyword spotting: weight of `_unknown_` clips in the training loss

    @property
    def task(self) -> str:
        """The recipe's kind (the field's earlier name)."""
        return self.kind

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if not label.startswith("_"))

    @property
    def heads(self) -> tuple[str, ...]:
        return self.labels

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise BuildError(f"{self.source}: no profile {name!r} (has {', '.join(self.profiles)})")
        return self.profiles[name]


@dataclass(frozen=True)
class _RecipeTop:
    name: str
    description: str
    ship: str
    seed: int
    architecture: str = ""
    kind: str = ""
    task: str = ""  # the earlier name of `kind`
    labels: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    unknown_words: tuple[str, ...] = ()
    unknown_weight: float = 1.0




def _profile_table(path: Path, tables: dict[str, dict], name: str) -> dict[str, Any]:
    """The fields of profile `name`: its own table, or, with `like = "<other profile>"`, the other
    profile's fields with this table's in their place (one level: the other profile may not say `like`)."""
    table = dict(tables[name])
    like = table.pop("like", None)
    if like is None:
        return table
    base = tables.get(like) if isinstance(like, str) and like != name else None
    if not isinstance(base, dict) or "like" in base:
        raise BuildError(f"{path}: field 'profiles.{name}.like' must name another profile of this file that "
                         f"says no 'like' itself, got {like!r}")
    return {**base, **table}


def load_recipe(path: Path) -> Recipe:
    """Load and check a model recipe; what its kind needs is asked of the kind (`kinds.get_kind`)."""
    from npubuild.kinds import DEFAULT, get_kind

    table = dict(read_toml(path))
    subtables = {name: table.pop(name, None) for name in ("frontend", "image", "optimize", "profiles", "detector",
                                                           "keras", "mix")}
    top = _take(path, table, _RecipeTop)
    if top.kind and top.task and top.kind != top.task:
        raise BuildError(f"{path}: field 'task' {top.task!r} contradicts field 'kind' {top.kind!r} (give 'kind')")
    kind_name = top.kind or top.task or DEFAULT
    try:
        kind = get_kind(kind_name)
    except BuildError as e:
        raise BuildError(f"{path}: field 'kind': {e}") from None
    for name in (*kind.tables, "optimize"):
        if subtables[name] is None:
            raise BuildError(f"{path}: missing table '[{name}]' (kind {kind_name} needs it)")
    if not subtables["profiles"]:
        raise BuildError(f"{path}: missing table '[profiles.<name>]'")
    labels = getattr(top, kind.label_field)
    if not labels:
        raise BuildError(f"{path}: missing field '{kind.label_field}'")
    frontend = _take(path, subtables["frontend"], FrontEnd, prefix="frontend.") if subtables["frontend"] else None
    image = _take(path, subtables["image"], ImageSettings, prefix="image.") if subtables["image"] else None
    keras = _take(path, subtables["keras"], KerasSettings, prefix="keras.") if subtables["keras"] else None
    optimize = _take(path, subtables["optimize"], OptimizeSettings, prefix="optimize.")
    if not 0.0 < optimize.target_sparsity < 1.0:
        raise BuildError(f"{path}: field 'optimize.target_sparsity' must be between 0 and 1")
    if optimize.clusters < 2:
        raise BuildError(f"{path}: field 'optimize.clusters' must be at least 2")
    if optimize.centroid_init not in CENTROID_INITS:
        raise BuildError(f"{path}: field 'optimize.centroid_init' {optimize.centroid_init!r} is unknown "
                         f"(known: {', '.join(CENTROID_INITS)})")
    profiles = {}
    for pname in subtables["profiles"]:
        if pname not in PROFILES:
            raise BuildError(f"{path}: unknown profile 'profiles.{pname}' (known: {', '.join(PROFILES)})")
        profiles[pname] = _take(path, _profile_table(path, subtables["profiles"], pname), Profile,
                                prefix=f"profiles.{pname}.", name=pname)
        for size in kind.profile_sizes:
            if getattr(profiles[pname], size) <= 0:
                raise BuildError(f"{path}: field 'profiles.{pname}.{size}' must be given and positive")
        if profiles[pname].batchnorm_samples < 0:
            raise BuildError(f"{path}: field 'profiles.{pname}.batchnorm_samples' must be 0 or more")
    if top.name != path.stem:
        raise BuildError(f"{path}: field 'name' is {top.name!r} but the file is named {path.stem!r}")
    if kind.architectures and top.architecture not in kind.architectures:
        raise BuildError(f"{path}: field 'architecture' {top.architecture!r} is unknown for kind {kind_name} "
                         f"(known: {', '.join(kind.architectures)})")
    if top.ship not in RECIPES:
        raise BuildError(f"{path}: field 'ship' names unknown technique {top.ship!r} "
                         f"(known: {', '.join(RECIPES)})")
    if not 0.0 < top.unknown_weight <= 1.0 or (top.unknown_weight != 1.0 and "_unknown_" not in labels):
        raise BuildError(f"{path}: field 'unknown_weight' must be in (0, 1] and needs an '_unknown_' label, "
                         f"got {top.unknown_weight!r}")
    if len(set(labels)) != len(labels):
        raise BuildError(f"{path}: field '{kind.label_field}' has duplicates")
    if frontend is not None and (frontend.num_frames <= 0 or frontend.fft_size < frontend.window_samples):
        raise BuildError(f"{path}: table 'frontend' gives no frames (window longer than clip or FFT)")
    if image is not None:
        if image.height < 32 or image.width < 32:
            raise BuildError(f"{path}: field 'image.height' and 'image.width' must be at least 32")
        if image.height != image.width:
            raise BuildError(f"{path}: field 'image.width' must equal 'image.height' (square input: images are "
                             f"centre-cropped to a square)")
        if not 0.0 < image.alpha <= 1.4:
            raise BuildError(f"{path}: field 'image.alpha' must be in (0, 1.4]")
        if image.detail_side and image.detail_side < image.height:
            raise BuildError(f"{path}: field 'image.detail_side' must be 0 (no detail view) or at least "
                             f"'image.height' ({image.height})")
        unknown_heads = [h for h in image.detail_heads if h not in labels]
        if unknown_heads:
            raise BuildError(f"{path}: field 'image.detail_heads' names {unknown_heads[0]!r}, not one of the heads")
        if image.detail_heads and not image.detail_side:
            raise BuildError(f"{path}: field 'image.detail_heads' needs 'image.detail_side'")
    detector = (_load_detector(path, subtables["detector"], frontend) if subtables["detector"] is not None
                else None)
    mix = MixSettings()
    if subtables["mix"] is not None:
        if not kind.mixes_builtin_data:
            raise BuildError(f"{path}: table '[mix]' is for kinds with built-in data to mix (kind {kind_name} has none)")
        if not isinstance(subtables["mix"], dict):
            raise BuildError(f"{path}: field 'mix' must be a table")
        mix = _take(path, subtables["mix"], MixSettings, prefix="mix.")
        if not 0.0 < mix.real_share <= 1.0:
            raise BuildError(f"{path}: field 'mix.real_share' must be in (0, 1], got {mix.real_share!r}")
    recipe = Recipe(name=top.name, description=top.description, kind=kind_name, architecture=top.architecture,
                    labels=labels, unknown_words=top.unknown_words, unknown_weight=top.unknown_weight,
                    ship=top.ship, seed=top.seed,
                    frontend=frontend, image=image, optimize=optimize, profiles=profiles, source=path,
                    detector=detector, keras=keras, mix=mix)
    problem = kind.check_recipe(recipe)
    if problem:
        raise BuildError(f"{path}: field '{problem[0]}' {problem[1]}")
    return recipe


def _load_detector(path: Path, table: Any, frontend: FrontEnd | None) -> DetectorTuning:
    if frontend is None:
        raise BuildError(f"{path}: table '[detector]' is for keyword spotting (needs a '[frontend]')")
    if not isinstance(table, dict):
        raise BuildError(f"{path}: field 'detector' must be a table")
    kinds = {"stride_ms": int, "average_windows": int, "refractory_ms": int, "threshold": float,
             "false_alarm_limit_per_hour": float}
    for key, value in table.items():
        if key not in kinds:
            raise BuildError(f"{path}: unknown field 'detector.{key}'")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (kinds[key] is int and not isinstance(value, int)):
            raise BuildError(f"{path}: field 'detector.{key}' must be {kinds[key].__name__}, got {value!r}")
    tuning = DetectorTuning(**table)
    if tuning.false_alarm_limit_per_hour < 0:
        raise BuildError(f"{path}: field 'detector.false_alarm_limit_per_hour' must not be negative")
    # check the fixed settings as `invoke listen` would, beside valid stand-ins for the searched ones
    some_stride = math.lcm(1000 * frontend.stride_samples, frontend.sample_rate) // frontend.sample_rate
    probe = DetectorSettings(**{"stride_ms": some_stride,
                                "average_windows": 1, "threshold": 0.5, "refractory_ms": 0, **tuning.fixed})
    problem = detector_problem(probe, frontend)
    if problem:
        raise BuildError(f"{path}: field 'detector.{problem[0]}' {problem[1]}")
    return tuning


def detector_problem(d: DetectorSettings, frontend: FrontEnd) -> tuple[str, str] | None:
    """(field, what is wrong) for the first bad value of `d`, or None (shared with `invoke listen`'s options)."""
    frame_ms = 1000 * frontend.stride_samples / frontend.sample_rate
    if d.stride_ms <= 0 or (d.stride_ms * frontend.sample_rate) % (1000 * frontend.stride_samples):
        return "stride_ms", (f"must be a positive multiple of the front end's frame stride ({frame_ms:g} ms), "
                             f"got {d.stride_ms}")
    if d.average_windows < 1:
        return "average_windows", f"must be at least 1, got {d.average_windows}"
    if not 0.0 < d.threshold <= 1.0:
        return "threshold", f"must be in (0, 1], got {d.threshold}"
    if d.refractory_ms < 0:
        return "refractory_ms", f"must not be negative, got {d.refractory_ms}"
    return None


def resolve_models(root: Path, name: str) -> list[Recipe]:
    """`name` is a model name, several separated by commas, or "all" (every recipe in models/)."""
    paths = sorted((root / "models").glob("*.toml"))
    if name != "all":
        known = {p.stem: p for p in paths}
        wanted = [n.strip() for n in name.split(",") if n.strip()]
        for n in wanted:
            if n not in known:
                raise BuildError(f"{root / 'models' / (n + '.toml')}: no such model recipe")
        paths = [known[n] for n in dict.fromkeys(wanted)]
    return [load_recipe(p) for p in paths]


# --------------------------------------------------------------------------- editing a recipe file


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def edit_toml(text: str, table: str, key: str, value: Any) -> str:
    """Set `key = value` in `[table]` ("" for the top level) by editing its line (comments, order and
    the rest of the file kept); a missing key is added at the end of its table."""
    lines = text.splitlines(keepends=True)
    current, start, end = "", 0 if not table else None, None
    for i, line in enumerate(lines):
        header = re.match(r"\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            if current == table and start is not None and end is None:
                end = i
            current = header.group(1).strip()
            if current == table:
                start = i + 1
            continue
        if current == table and start is not None:
            m = re.match(rf"(\s*{re.escape(key)}\s*=\s*)(\"[^\"]*\"|[^#\s]+)(.*)$", line, re.DOTALL)
            if m:
                lines[i] = m.group(1) + _toml_value(value) + m.group(3)
                return "".join(lines)
    if start is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{key} = {_toml_value(value)}\n"
    end = len(lines) if end is None else end
    while end > start and not lines[end - 1].strip():
        end -= 1
    lines.insert(end, f"{key} = {_toml_value(value)}\n")
    return "".join(lines)


def edit_recipe(path: Path, technique: str, changed: dict) -> None:
    from npubuild.stages import write_text

    text = edit_toml(path.read_text(), "", "ship", technique)
    for name, value in sorted(changed.items()):
        table, key = name.split(".", 1)
        text = edit_toml(text, table, key, value)
    write_text(path, text)
