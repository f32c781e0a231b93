"""Benchmarks: wall time of each stage of a clean build, and of the no-op rebuild.

Results go to a JSON file in the repository, with the machine they ran on.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .stages import tool_versions, write_json


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "tools": tool_versions(("tensorflow", "tf-keras", "tensorflow-model-optimization", "ethos-u-vela",
                                    "ai-edge-litert"))}


def run_benchmarks(root: Path, *, profile: str, output: Path, target: str, model: str = "kws") -> dict:
    """Build `model` from scratch in a scratch project, then rebuild it with nothing changed."""
    from .pipeline import build

    with tempfile.TemporaryDirectory(prefix="npubuild-bench-") as scratch:
        project = Path(scratch)
        for sub in ("models", "targets"):
            shutil.copytree(root / sub, project / sub)
        start = time.perf_counter()
        summary = build(project, model=model, target=target, profile=profile)
        clean_seconds = time.perf_counter() - start
        train_log = next((project / "build" / profile / model).glob("*/fp32/train.json"))
        # The no-op rebuild as a user runs it: a fresh process, through the library entry point.
        code = ("from pathlib import Path; from npubuild.pipeline import build; "
                f"build(Path({str(project)!r}), model={model!r}, target={target!r}, profile={profile!r}, "
                "log=lambda s: None)")
        noop = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            noop.append(time.perf_counter() - t0)
        reports = summary.reports
        train = json.loads(train_log.read_text())
    results = {
        "benchmark": f"clean build of {model}, profile {profile}, target {target}",
        "machine": _machine(),
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 2)} for r in summary.results],
        "clean_build_seconds": round(clean_seconds, 1),
        "noop_rebuild_seconds": {"runs": [round(s, 3) for s in noop], "best": round(min(noop), 3)},
        "training": {k: train[k] for k in ("samples", "epochs", "seconds", "samples_per_second") if k in train},
        "reports": {name: {"models": [{k: m[k] for k in ("name", "technique", "sram_bytes", "flash_bytes",
                                                         "inference_ms", "tflite_bytes", "accuracy")}
                                      for m in rep["models"]]} for name, rep in reports.items()},
    }
    write_json(output, results)
    print(f"benchmark results written to {output.relative_to(root) if output.is_relative_to(root) else output}")
    return results
