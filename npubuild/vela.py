"""Compile an INT8 TFLite model with Arm's Vela for one target, and read its figures.

Vela writes `<net>_vela.tflite`, a summary CSV and (with --verbose-performance)
a per-layer CSV. Vela 5.2's console no longer prints cycles, so figures come
from the summary CSV; operator counts from the console summary.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from npubuild.config import Target
from npubuild.errors import BuildError
from npubuild.vela_ini import ARM_CONFIG


@dataclass(frozen=True)
class VelaOutputs:
    """Where one model's Vela results live for one target."""

    folder: Path
    model: str

    @property
    def tflite(self) -> Path:
        return self.folder / f"{self.model}_vela.tflite"

    @property
    def summary(self) -> Path:
        return self.folder / f"{self.model}_summary.csv"

    @property
    def per_layer(self) -> Path:
        return self.folder / f"{self.model}_per-layer.csv"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.model}_vela.log"

    def all(self) -> tuple[Path, ...]:
        return (self.tflite, self.summary, self.per_layer, self.log)


def vela_command(network: Path, target: Target, output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "ethosu.vela", str(network),
        "--accelerator-config", target.accelerator,
        "--config", str(target.vela_ini.resolve()) if target.vela_config else ARM_CONFIG,
        "--system-config", target.system_config,
        "--memory-mode", target.memory_mode,
        "--output-dir", str(output_dir),
        "--verbose-performance",
    ]


def compile_with_vela(tflite: Path, target: Target, out: VelaOutputs) -> None:
    """Run Vela in a scratch folder and move its results into place (stable names)."""
    out.folder.mkdir(parents=True, exist_ok=True)
    for stale in out.folder.glob(".vela-*"):  # left by a killed run of this stage
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out.folder, prefix=".vela-") as scratch:
        scratch = Path(scratch)
        network = scratch / f"{out.model}.tflite"
        shutil.copyfile(tflite, network)
        proc = subprocess.run(vela_command(network, target, scratch / "out"),
                              capture_output=True, text=True, cwd=scratch)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            raise BuildError(f"{tflite}: Vela failed for target {target.name}: "
                             f"{lines[-1] if lines else 'exit code ' + str(proc.returncode)}")
        produced = scratch / "out"
        summaries = list(produced.glob("*_summary_*.csv"))
        if not summaries:
            raise BuildError(f"{tflite}: Vela wrote no summary CSV for target {target.name}")
        # The log names the scratch folder (random, absolute): keep the names relative to it.
        (scratch / "log").write_text(proc.stdout.replace(f"{produced}{os.sep}", ""))
        moves = [
            (produced / f"{out.model}_vela.tflite", out.tflite),
            (summaries[0], out.summary),
            (produced / f"{out.model}_per-layer.csv", out.per_layer),
            (scratch / "log", out.log),
        ]
        for src, dst in moves:
            os.replace(src, dst)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The Ethos-U operator's inputs, by position: the driver's ABI (TFLM's ethos-u kernel), the same in
# every Vela version. Names are not: Vela 5 writes `ethos_u_command_stream`, `read_only`, `scratch`;
# older versions `_split_1_command_stream`, `_split_1_flash`, `_split_1_scratch`, `_split_1_scratch_fast`.
# The IFMs follow these four.
ETHOSU_INPUTS = ("command_stream_bytes", "read_only_bytes", "scratch_bytes", "fast_scratch_bytes")


def compiled_layout(vela_tflite: Path) -> dict[str, int]:
    """Byte sizes of what the Ethos-U operator of a Vela-compiled model needs, read from the file:
    the command stream and read-only data (weights; both in the model array), the scratch
    tensor (the feature maps: it lives in the TFLM arena) and the fast scratch (a separate
    buffer in SRAM in Dedicated_Sram memory modes; the scratch itself otherwise, then 0 here).
    Tensors are found by their position among the operator's inputs, never by name."""
    from ethosu.vela.tflite.Model import Model

    model = Model.GetRootAsModel(vela_tflite.read_bytes(), 0)
    tensors: dict[str, set[tuple[int, int]]] = {role: set() for role in ETHOSU_INPUTS}
    sizes = dict.fromkeys(ETHOSU_INPUTS, 0)
    operators = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if (model.OperatorCodes(op.OpcodeIndex()).CustomCode() or b"") != b"ethos-u":
                continue
            operators += 1
            if op.InputsLength() < len(ETHOSU_INPUTS):
                raise BuildError(f"{vela_tflite}: its Ethos-U operator has {op.InputsLength()} inputs; the driver "
                                 f"needs at least 4 (command stream, weights, scratch, fast scratch)")
            indices = [op.Inputs(k) for k in range(len(ETHOSU_INPUTS))]
            if indices[2] < 0:
                raise BuildError(f"{vela_tflite}: its Ethos-U operator has no scratch tensor (input 2)")
            for role, index in zip(ETHOSU_INPUTS, indices, strict=True):
                if index < 0 or (g, index) in tensors[role] or (role == "fast_scratch_bytes" and index == indices[2]):
                    continue  # absent, counted already, or the fast scratch is the scratch itself
                tensors[role].add((g, index))
                tensor = graph.Tensors(index)
                size = 1
                for d in range(tensor.ShapeLength()):
                    size *= tensor.Shape(d)
                sizes[role] += size
    if not operators:
        raise BuildError(f"{vela_tflite}: no Ethos-U operator (custom code 'ethos-u'): not a Vela-compiled model")
    return sizes


def top_layers(layers: list[dict[str, str]], column: str, count: int = 5) -> list[dict]:
    """The `count` layers with the most `column` ("Op Cycles" or "Staging Usage")."""
    rows = [r for r in layers if float(r[column] or 0) > 0]
    rows.sort(key=lambda r: -float(r[column]))
    return [{"name": r["Name"], "operator": r["Original Operator"], "target": r["Target"],
             "value": int(float(r[column]))} for r in rows[:count]]


def read_vela_figures(out: VelaOutputs) -> dict:
    """Figures of one compiled model: bytes, cycles, time, operators, per-layer rows."""
    rows = _read_csv(out.summary)
    if len(rows) != 1:
        raise BuildError(f"{out.summary}: expected one summary row, found {len(rows)}")
    s = rows[0]
    log = out.log.read_text()
    counts = {}
    for kind in ("CPU", "NPU"):
        m = re.search(rf"^{kind} operators = (\d+)", log, re.MULTILINE)
        if not m:
            raise BuildError(f"{out.log}: no '{kind} operators' line in Vela's summary")
        counts[kind] = int(m.group(1))
    layers = _read_csv(out.per_layer)
    kib = 1024
    return {
        "sram_bytes": round(float(s["sram_memory_used"]) * kib),
        "flash_bytes": round((float(s["off_chip_flash_memory_used"]) + float(s["on_chip_flash_memory_used"])) * kib),
        "dram_bytes": round(float(s["dram_memory_used"]) * kib),
        "cycles": int(float(s["cycles_total"])),
        "inference_ms": round(float(s["inference_time"]) * 1000.0, 4),
        "macs": int(float(s["nn_macs"])),
        "npu_ops": counts["NPU"],
        "cpu_ops": counts["CPU"],
        "cpu_op_names": sorted({row["Original Operator"] for row in layers if row["Target"] != "NPU"}),
        "weights_storage": s["weights_storage_area"],
        "feature_map_storage": s["feature_map_storage_area"],
        "compiled_bytes": out.tflite.stat().st_size,
        **compiled_layout(out.tflite),
        "top_cycles": top_layers(layers, "Op Cycles"),
        "top_staging": top_layers(layers, "Staging Usage"),
    }
