"""Read Vela's system-config / memory-mode .ini files, to check a target before Vela runs.

Vela's own checks come late (during compilation) or not at all: it rejects a
memory mode whose arena would live in flash (every Dedicated_Sram mode on a
flash-backed system config) only when it compiles, and it accepts a system
config written for another NPU family. Targets are checked here instead, with
the file and field named.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from npubuild.errors import BuildError

ARM_CONFIG = "Arm/vela.ini"  # as Vela names its bundled file on the command line


def arm_config_path() -> Path:
    """Where Vela's bundled Arm/vela.ini is (found without importing Vela's compiler)."""
    import importlib.util

    spec = importlib.util.find_spec("ethosu")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("ethos-u-vela is not installed (python -m pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "config_files" / "Arm" / "vela.ini"


@dataclass(frozen=True)
class SystemConfig:
    name: str
    core_clock_hz: float
    axi0_port: str  # Sram | Dram | OnChipFlash | OffChipFlash
    axi1_port: str


@dataclass(frozen=True)
class MemoryMode:
    name: str
    const_mem_area: str  # Axi0 | Axi1
    arena_mem_area: str
    cache_mem_area: str
    arena_cache_size: int | None


class VelaIni:
    """The sections of one .ini, with Vela's `inherit=` resolved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        parser = configparser.ConfigParser()
        try:
            with open(path) as f:
                parser.read_file(f)
        except FileNotFoundError:
            raise BuildError(f"{path}: file not found") from None
        except configparser.Error as e:
            raise BuildError(f"{path}: not a valid Vela .ini: {str(e).splitlines()[0]}") from None
        self._parser = parser

    def _section(self, kind: str, name: str) -> dict[str, str]:
        key = f"{kind}.{name}"
        if not self._parser.has_section(key):
            return {}
        values = dict(self._parser[key])
        parent = values.pop("inherit", None)
        if parent:
            parent_kind, _, parent_name = parent.partition(".")
            values = {**self._section(parent_kind, parent_name), **values}
        return values

    def names(self, kind: str) -> list[str]:
        return [s.split(".", 1)[1] for s in self._parser.sections() if s.startswith(kind + ".")]

    def system_config(self, name: str) -> SystemConfig | None:
        s = self._section("System_Config", name)
        if not s:
            return None
        return SystemConfig(name, float(s.get("core_clock", "0")), s.get("axi0_port", ""), s.get("axi1_port", ""))

    def memory_mode(self, name: str) -> MemoryMode | None:
        s = self._section("Memory_Mode", name)
        if not s:
            return None
        size = s.get("arena_cache_size")
        return MemoryMode(name, s.get("const_mem_area", ""), s.get("arena_mem_area", ""),
                          s.get("cache_mem_area", ""), int(float(size)) if size else None)


def port(system: SystemConfig, area: str) -> str:
    """The memory behind an AXI area ("Axi0"/"Axi1") of a system config."""
    return {"Axi0": system.axi0_port, "Axi1": system.axi1_port}.get(area, "")
