"""The firmware test image of a target: every model's compiled array, the memory the memory report lays out
for the models, their application C code, a startup file and a small test main, linked with the Arm
toolchain (arm-none-eabi-gcc, newlib) into an ELF whose sections are compared with the report.

- The target's memory regions are data (`[memory.*]` origins, `[image]` in targets/*.toml); the linker
  script (templates/image.ld.j2) gives the models' part of each memory a region exactly as long as its
  budget, and places there the parts the report counts (`report.memory_use`, each part's "kind"). So the
  linker decides "fits" the way the budget check does, and says "region ... overflowed" when it does not.
- The sources (image.ld, startup.c, test_main.c, Makefile) go to firmware_assets/<target>/image/ beside
  `link_report.{json,md}` (the ELF against the report, part by part); the ELF and its map to
  build/image/<target>/. Compiled with the flags the application code is sized with (app_code).
- The test main answers requests through semihosting (firmware_test.py writes and reads them), so the
  application code runs on QEMU's emulated Cortex-M55; the models do not (no NPU, no TFLM).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from npubuild.app_code import CORTEX_M55_FLAGS, PARTS, SIZES_SUFFIX
from npubuild.c_text import c_identifier
from npubuild.config import Target
from npubuild.errors import BuildError

IMAGE_DIR = "image"  # firmware_assets/<target>/image/
SOURCES = ("image.ld", "startup.c", "test_main.c", "Makefile")
REPORT_JSON, REPORT_MD = "link_report.json", "link_report.md"
ELF = "image.elf"
IO_SECTION = ".bss.model_io"
CFLAGS = (*CORTEX_M55_FLAGS, "-Wall", "-Wextra")
LIBS = ("-Wl,--start-group", "-lc", "-lrdimon", "-lm", "-lgcc", "-Wl,--end-group")
# The region of each memory's models' part in image.ld
REGION = {"sram": "ML_SRAM", "dram": "ML_DRAM", "flash": "ML_FLASH"}


def ldflags(script: str) -> tuple[str, ...]:
    return ("-nostartfiles", "-T", script, "-Wl,--gc-sections", "-Wl,-Map=image.map", "-Wl,--print-memory-usage")


def toolchain() -> str | None:
    """arm-none-eabi-gcc's version line, or None when it (or newlib's semihosting library) is missing."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return None
    proc = subprocess.run([gcc, *CORTEX_M55_FLAGS, "-print-file-name=librdimon.a"], capture_output=True, text=True)
    if proc.returncode != 0 or not Path(proc.stdout.strip()).is_absolute():
        return None  # gcc without libnewlib-arm-none-eabi: no C library to link
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
    return version.splitlines()[0].strip()


# --------------------------------------------------------------------------- what goes into the image


@dataclass(frozen=True)
class ImageModel:
    """One model in the image: its folder of assets and the application parts beside it."""

    name: str
    folder: Path
    parts: tuple[str, ...]  # app_code.PARTS present: "<name>_<part>.c"
    app_sources: tuple[str, ...]  # the application C files, in file-name order

    @property
    def symbol(self) -> str:
        return c_identifier(self.name)

    @property
    def guard(self) -> str:
        return self.symbol.upper()

    def sources(self) -> list[Path]:
        return [self.folder / f"{self.name}_model.c", *(self.folder / s for s in self.app_sources)]

    def inputs(self) -> list[Path]:
        """The files of the model's folder the image is built from."""
        headers = [self.folder / f"{self.name}_{suffix}" for suffix in ("model.h", "meta.h")]
        headers += [self.folder / f"{self.name}_{part}.h" for part in self.parts]
        return [*self.sources(), *headers]


def image_models(target_folder: Path, names: list[str]) -> list[ImageModel]:
    """The models of a target's assets folder, in the report's order, with the application C beside
    each (the files its `<model>_app_sizes.json` sized)."""
    models = []
    for name in names:
        folder = target_folder / name
        sizes = folder / f"{name}{SIZES_SUFFIX}"
        sources = tuple(sorted(json.loads(sizes.read_text()).get("files", {}))) if sizes.is_file() else ()
        parts = tuple(p for p in PARTS if f"{name}_{p}.c" in sources)
        models.append(ImageModel(name, folder, parts, sources))
    return models


@dataclass(frozen=True)
class Buffer:
    """A buffer the test main declares for a part of the memory report (arena, NPU fast scratch, I/O)."""

    symbol: str
    bytes: int
    section: str
    memory: str
    part: str


def buffers(target: Target, report: dict) -> list[Buffer]:
    """The arenas, NPU fast scratch and I/O buffers of the report's parts, one buffer each, in the
    section the target names for them."""
    sections = {"arena": target.arena_section, "fast_scratch": target.fast_memory_section, "io": IO_SECTION}
    suffix = {"arena": "arena", "fast_scratch": "fast_memory", "io": "io"}
    out = []
    for memory in ("sram", "dram", "flash"):
        for part in report["total"].get(memory, {}).get("parts", []) if isinstance(report["total"].get(memory),
                                                                                   dict) else []:
            kind = part.get("kind")
            if kind not in sections:
                continue
            owner = c_identifier(part["models"][0]) if len(part["models"]) == 1 else "shared"
            out.append(Buffer(f"{owner}_{suffix[kind]}", part["bytes"], sections[kind], memory, part["part"]))
    return out


def regions(target: Target) -> list[dict]:
    """image.ld's MEMORY: the models' part of each memory (exactly its budget), then CODE and DATA."""
    out = []
    for memory in ("sram", "dram", "flash"):
        region = target.memory.get(memory)
        if region is None:
            continue
        out.append({"name": REGION[memory], "attributes": "rx" if memory == "flash" else "rwx",
                    "origin": f"0x{region.origin:08X}", "length": region.budget_bytes,
                    "comment": f"{memory}: {region.ml_share:g} of {region.region}"})
    for name, attributes, region in (("CODE", "rx", target.image.code), ("DATA", "rwx", target.image.data)):
        out.append({"name": name, "attributes": attributes, "origin": f"0x{region.origin:08X}", "length": region.bytes,
                    "comment": region.region})
    return out


def image_context(target: Target, target_folder: Path, report: dict) -> dict:
    """What the image templates need, shaped from the target, the report and the models' folders."""
    image_dir = target_folder / IMAGE_DIR
    models = image_models(target_folder, [m["name"] for m in report["models"]])
    relative = [f"../{m.name}" for m in models]
    objects = ["startup.o", "test_main.o", *(Path(s).stem + ".o" for m in models for s in (
        f"{m.name}_model.c", *m.app_sources))]
    return {
        "target": target, "source": f"targets/{target.name}.toml", "regions": regions(target),
        "models": [{"name": m.name, "symbol": m.symbol, "guard": m.guard, "parts": m.parts} for m in models],
        "apps": [{"name": m.symbol, "objects": [Path(s).stem + ".o" for s in m.app_sources]}
                 for m in models if m.app_sources],
        "buffers": buffers(target, report), "io_section": IO_SECTION,
        "shared": target.models_run == "one_at_a_time" and len(models) > 1,
        "model_region": REGION[target.model_memory], "models_copied": target.model_memory == "dram",
        "arena_region": REGION[target.arena_memory], "stack_bytes": target.image.stack_bytes,
        "cflags": CFLAGS, "ldflags": ldflags("image.ld"), "libs": LIBS, "objects": objects,
        "include_dirs": relative, "source_dirs": [".", *relative],
        "_models": models, "_image_dir": image_dir,
    }


def render_image(context: dict) -> dict[str, str]:
    """{file name: text} of the image's sources."""
    from npubuild.assets import _environment

    env = _environment()
    ctx = {k: v for k, v in context.items() if not k.startswith("_")}
    return {name: env.get_template(f"{name}.j2").render(ctx) for name in SOURCES}


# --------------------------------------------------------------------------- compile and link


@dataclass
class Link:
    """What compiling and linking said: the ELF when it linked, else the linker's messages."""

    ok: bool
    elf: Path
    messages: list[str] = field(default_factory=list)  # the linker's own lines (warnings, errors)
    usage: dict[str, int] = field(default_factory=dict)  # region -> bytes used (ld --print-memory-usage)


def _ld_lines(text: str) -> list[str]:
    """The tools' messages without their install paths ("/usr/lib/.../ld: region ..." -> "ld: region ...")."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\S*/(ld|collect2|arm-none-eabi-gcc)(:)", r"\1\2", line.strip())
        if line:
            lines.append(line)
    return lines


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def memory_usage(text: str) -> dict[str, int]:
    """{region: used bytes} from ld's --print-memory-usage table."""
    usage = {}
    for m in re.finditer(r"^\s*(\w+):\s+(\d+)\s+(B|KB|MB|GB)\s+\d+\s+(?:B|KB|MB|GB)\s+[\d.]+%", text, re.M):
        usage[m.group(1)] = int(m.group(2)) * _UNITS[m.group(3)]
    return usage


def compile_and_link(context: dict, out_dir: Path) -> Link:
    """Compile every source of the image to out_dir/<name>.o and link out_dir/image.elf, as the Makefile
    does (the same flags; objects named alike, so image.ld's patterns match both)."""
    gcc = shutil.which("arm-none-eabi-gcc")
    image_dir: Path = context["_image_dir"]
    models: list[ImageModel] = context["_models"]
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{m.folder}" for m in models]
    sources = [image_dir / "startup.c", image_dir / "test_main.c", *(s for m in models for s in m.sources())]
    for source in sources:
        proc = subprocess.run([gcc, *CFLAGS, *includes, "-c", str(source), "-o", source.stem + ".o"],
                              cwd=out_dir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{source}: does not compile for the Cortex-M55: "
                             f"{' '.join(_ld_lines(proc.stderr)[:3])}")
    elf = out_dir / ELF
    elf.unlink(missing_ok=True)
    proc = subprocess.run([gcc, *CFLAGS, *ldflags(str(image_dir / "image.ld")), *context["objects"], *LIBS,
                           "-o", ELF], cwd=out_dir, capture_output=True, text=True)
    ok = proc.returncode == 0 and elf.is_file()
    return Link(ok, elf, _ld_lines(proc.stderr), memory_usage(proc.stdout) if ok else {})


# --------------------------------------------------------------------------- the ELF against the report


def _tool(name: str) -> str:
    found = shutil.which(f"arm-none-eabi-{name}")
    if found is None:
        raise BuildError(f"arm-none-eabi-{name} not found (apt install binutils-arm-none-eabi)")
    return found


def elf_sections(elf: Path) -> dict[str, dict[str, int]]:
    """{section: {size, vma, lma}} of the ELF's allocated sections (objdump -h)."""
    text = subprocess.run([_tool("objdump"), "-h", str(elf)], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0].isdigit():
            out[parts[1]] = {"size": int(parts[2], 16), "vma": int(parts[3], 16), "lma": int(parts[4], 16)}
    return out


def elf_symbols(elf: Path) -> dict[str, dict[str, int]]:
    """{symbol: {address, size}} of the ELF's sized symbols (nm -S)."""
    text = subprocess.run([_tool("nm"), "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[3]] = {"address": int(parts[0], 16), "size": int(parts[1], 16)}
    return out


def _footprints(symbols: dict[str, dict[str, int]], names: list[str], section: dict[str, int]) -> dict[str, int]:
    """Bytes each named symbol takes in its output section: up to the next one (its alignment padding
    included), the last up to the section's end."""
    placed = sorted((symbols[n]["address"], n) for n in names if n in symbols)
    ends = [a for a, _ in placed[1:]] + [section["vma"] + section["size"]]
    return {n: end - a for (a, n), end in zip(placed, ends, strict=True)}


def linker_stubs(map_text: str) -> dict[str, int]:
    """{output section: bytes of linker stubs in it} from the link map: the long-branch veneers the linker
    adds where a call is out of a branch's reach (application code in flash calling the C library in
    CODE, e.g. DDR at 0x70000000 calling ITCM at 0x10000000)."""
    stubs: dict[str, int] = {}
    section = ""
    for line in map_text.splitlines():
        head = re.match(r"^(\.\S+)", line)
        if head:
            section = head.group(1)
        stub = re.match(r"^\s+\.text\.__stub\s+0x[0-9a-fA-F]+\s+0x([0-9a-fA-F]+)\s+linker stubs", line)
        if stub and section:
            stubs[section] = stubs.get(section, 0) + int(stub.group(1), 16)
    return stubs


def compare(report: dict, context: dict, link: Link) -> dict:
    """The linked ELF against the memory report: each part the report counts, with the bytes the ELF
    gives it; each ML region's total from the linker against the report's; what the image adds. A
    difference is explained when it is the linker stubs in that part (and their alignment): what the
    image's layout adds, not a miscount."""
    sections, symbols = elf_sections(link.elf), elf_symbols(link.elf)
    stubs = linker_stubs((link.elf.parent / "image.map").read_text())
    models: list[ImageModel] = context["_models"]
    model_fp = _footprints(symbols, [f"{m.symbol}_model" for m in models], sections[".npu_model"])
    by_part = {(b.memory, b.part): b.symbol for b in context["buffers"]}
    symbol_of = {m.name: m.symbol for m in models}

    def size(name: str) -> int:
        return sections.get(name, {}).get("size", 0)

    rows = []
    for memory in ("sram", "dram", "flash"):
        total = report["total"].get(memory)
        if not isinstance(total, dict):
            continue
        for part in total["parts"]:
            what, owner = part.get("kind"), symbol_of.get(part["models"][0], part["models"][0])
            stub = 0
            if what == "model":
                elf_bytes, where = model_fp.get(f"{owner}_model"), ".npu_model"
            elif what == "app_code":
                where = f".app_code.{owner}"
                elf_bytes, stub = size(where) + size(f".app_data.{owner}"), stubs.get(where, 0)
            elif what == "app_buffers":
                elf_bytes, where = size(f".app_data.{owner}") + size(f".app_bss.{owner}"), f".app_bss.{owner}"
            else:
                where = by_part.get((memory, part["part"]))
                elf_bytes = symbols[where]["size"] if where in symbols else None
            difference = None if elf_bytes is None else elf_bytes - part["bytes"]
            explained = bool(stub) and difference is not None and 0 < difference <= stub + 15
            rows.append({"memory": memory, "part": part["part"], "kind": what, "report_bytes": part["bytes"],
                         "elf_bytes": elf_bytes, "elf": where, "linker_stub_bytes": stub,
                         "equal": difference == 0, "ok": difference == 0 or explained})
    totals = []
    for memory, region in REGION.items():
        total = report["total"].get(memory)
        if isinstance(total, dict):
            used = link.usage.get(region)
            stubbed = sum(r["elf_bytes"] - r["report_bytes"] for r in rows
                          if r["memory"] == memory and r["ok"] and not r["equal"])
            totals.append({"memory": memory, "region": region, "report_bytes": total["used_bytes"], "elf_bytes": used,
                           "budget_bytes": total["budget_bytes"], "equal": used == total["used_bytes"],
                           "ok": used == total["used_bytes"] + stubbed})
    adds_code = sum(size(s) for s in (".vectors", ".text", ".ARM.exidx", ".copy_table", ".zero_table", ".data"))
    adds = {"code_bytes": adds_code, "code_region_used_bytes": link.usage.get("CODE"),
            "linker_stub_bytes": sum(r["linker_stub_bytes"] for r in rows),
            "data_bytes": size(".data"), "bss_bytes": size(".bss"), "stack_bytes": size(".stack"),
            "heap_bytes": context["target"].image.data.bytes - size(".data") - size(".bss") - size(".stack")}
    return {"parts": rows, "totals": totals, "image_adds": adds,
            "equal": all(r["ok"] for r in rows) and all(t["ok"] for t in totals)}


def render_markdown(target: Target, result: dict) -> str:
    lines = [f"# Firmware test image: {target.name}", ""]
    if result.get("linked") is None:
        return "\n".join(lines + [result["note"], ""])
    lines += [f"Linked with {result['toolchain']}: `make` in this folder builds the same image.elf"
              + (f", `make run` runs it on QEMU's {target.image.qemu_machine}" if target.image.qemu_machine else "")
              + " (docs/firmware.md).", ""]
    if not result["linked"]:
        lines += ["**The image does not link:**", "", *[f"    {m}" for m in result["linker"]], ""]
        return "\n".join(lines)
    def equal(r: dict) -> str:
        return "yes" if r["equal"] else "linker stubs" if r["ok"] else "NO"

    lines += ["The linked ELF against the memory report, part by part (bytes):", "",
              "| memory | part | report | ELF | ELF section or symbol | equal |", "|---|---|---:|---:|---|---|"]
    for r in result["parts"]:
        elf = "-" if r["elf_bytes"] is None else f"{r['elf_bytes']:,}"
        lines.append(f"| {r['memory']} | {r['part']} | {r['report_bytes']:,} | {elf} | `{r['elf']}` | {equal(r)} |")
    lines += ["", "| memory | linker region | report used | linker used | budget | equal |", "|---|---|---:|---:|---:|---|"]
    for t in result["totals"]:
        used = "-" if t["elf_bytes"] is None else f"{t['elf_bytes']:,}"
        lines.append(f"| {t['memory']} | {t['region']} | {t['report_bytes']:,} | {used} | {t['budget_bytes']:,} | "
                     f"{equal(t)} |")
    a = result["image_adds"]
    if a["linker_stub_bytes"]:
        lines += ["", f"Linker stubs: {a['linker_stub_bytes']:,} bytes of long-branch veneers inside the application "
                      f"code (calls from flash to the C library in CODE, out of a branch's reach), with their "
                      f"alignment: what this layout adds to the flash the report counts."]
    lines += ["", f"What the image adds, outside the models' budgets: startup, test main and C library "
                  f"{a['code_bytes']:,} bytes of code and constants in CODE ({target.image.code.region}); "
                  f"{a['data_bytes']:,} bytes of data and {a['bss_bytes']:,} of zeroed data, "
                  f"{a['stack_bytes']:,} of stack and {a['heap_bytes']:,} left to the heap in DATA "
                  f"({target.image.data.region}).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the stage's action


def output_paths(target_folder: Path) -> tuple[Path, ...]:
    """The stage's outputs: the sources and the link report (the ELF in build/ is named in the link report:
    a model set over budget makes none)."""
    image_dir = target_folder / IMAGE_DIR
    return tuple(image_dir / n for n in (*SOURCES, REPORT_JSON, REPORT_MD))


def input_paths(target_folder: Path, names: list[str]) -> list[Path]:
    """The model files an image of these models is built from (as they are now)."""
    return [p for m in image_models(target_folder, names) for p in m.inputs() if p.is_file()]


def make_image(target: Target, target_folder: Path, build_dir: Path, elf_name: str = "") -> dict:
    """Write the image's sources beside the target's assets, link it into `build_dir` when the Arm toolchain
    is there, compare it with the memory report; write and return the result (link_report.json, which names
    the ELF as `elf_name`: a path relative to the project)."""
    from npubuild import stages

    report = json.loads((target_folder / "memory_report.json").read_text())
    context = image_context(target, target_folder, report)
    image_dir = context["_image_dir"]
    for name, text in render_image(context).items():
        stages.write_text(image_dir / name, text)
    version = toolchain()
    if version is None:
        result = {"linked": None, "note": "arm-none-eabi-gcc with newlib not found: the image is not linked "
                                          "(apt install gcc-arm-none-eabi libnewlib-arm-none-eabi)"}
    else:
        link = compile_and_link(context, build_dir)
        result = {"linked": link.ok, "toolchain": version, "linker": link.messages}
        if link.ok:
            result.update(compare(report, context, link), elf=elf_name or ELF)
    stages.write_json(image_dir / REPORT_JSON, result)
    stages.write_text(image_dir / REPORT_MD, render_markdown(target, result))
    return result


def verdict(report: dict, result: dict) -> str | None:
    """What is wrong with the target's image and report together, in one line (None: nothing): the
    report's budget problems with the linker's own message beside them, or a link that failed (or
    passed) although the report fits (or does not)."""
    from npubuild.report import over_budget

    problems = over_budget(report)
    linked = result.get("linked")
    overflow = [m for m in result.get("linker", []) if "overflowed" in m or "will not fit" in m]
    if linked is None:
        return "; ".join(problems) or None
    if problems and not linked:
        return "; ".join(problems) + "; the linker agrees: " + "; ".join(overflow or result["linker"][:2])
    if problems:
        return "; ".join(problems) + "; but the firmware image linked (the linker and the report disagree)"
    if not linked:
        return (f"target {report['target']['name']}: the firmware image does not link although the memory report "
                f"fits: " + "; ".join(result["linker"][:3]))
    if not result.get("equal", True):
        bad = [r["part"] for r in result["parts"] if not r["ok"]] + [t["region"] for t in result["totals"]
                                                                    if not t["ok"]]
        return (f"target {report['target']['name']}: the linked image and the memory report differ on "
                f"{', '.join(bad)} (see {IMAGE_DIR}/{REPORT_MD})")
    return None
