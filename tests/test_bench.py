"""invoke bench: what its parts measure and how they share one results file."""

from __future__ import annotations

import json
import os

import pytest

from npubuild.bench import CpuUse, cpu_model, run_benchmarks
from npubuild.errors import BuildError
from tests.conftest import make_project

pytestmark = pytest.mark.slow


def test_clean_build_bench_times_every_stage_and_keeps_other_parts(tmp_path):
    root = make_project(tmp_path / "project", examples=True)
    out = root / "benchmarks" / "results.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"detector_tuning": {"seconds": 2.0}, "training_step": {"kws": {"ratio": 0.9}}}))
    taken = tmp_path / "taken"
    (taken / "models").mkdir(parents=True)
    with pytest.raises(BuildError, match=r"taken: --keep needs a new or empty folder$"):
        run_benchmarks(root, profile="smoke", output=out, target="corstone-300-u55-128", model="digits", keep=taken)
    kept = tmp_path / "kept"
    results = run_benchmarks(root, profile="smoke", output=out, target="corstone-300-u55-128", model="digits",
                             keep=kept)
    # the scratch project stays where --keep put it, its build whole
    assert (kept / "build" / "smoke" / "digits" / "builtin" / "fp32" / "train.json").is_file()
    saved = json.loads(out.read_text())
    assert saved["detector_tuning"] == {"seconds": 2.0}
    stages = [s["stage"] for s in saved["stages"]]
    assert stages[:2] == ["data digits", "train digits"] and "compile digits prune_cluster for corstone-300-u55-128" \
        in stages
    # the total covers every stage
    assert saved["clean_build_seconds"] >= sum(s["seconds"] for s in saved["stages"]) - 0.5
    assert len(saved["noop_rebuild_seconds"]["runs"]) == 3
    # how busy the cores were during the clean build (/proc/stat): a mean and a timeline within 0..cpus
    cpu = saved["clean_build_cpu"]
    assert cpu["cpus"] == os.cpu_count() and 0 < cpu["busy_cores_mean"] <= cpu["cpus"]
    assert cpu["busy_cores_per_bin"] and all(0 <= b <= cpu["cpus"] for b in cpu["busy_cores_per_bin"])
    assert 0 <= cpu["idle_core_seconds"] <= cpu["cpus"] * saved["clean_build_seconds"]
    # the training step was timed on this build's data, in the same run; the older kws figure stays
    assert saved["training_step"]["kws"] == {"ratio": 0.9}
    step = saved["training_step"]["digits"]
    ways = step["ways"]
    assert set(ways) == {"plain model.fit", "npubuild fit_epochs"}
    for way in ways.values():
        assert len(way["epoch_seconds"]) == step["epochs"] == 3 and way["samples_per_second"] > 0
    assert step["ratio"] == round(ways["npubuild fit_epochs"]["samples_per_second"]
                                  / ways["plain model.fit"]["samples_per_second"], 3)
    assert saved["training"]["digits"]["epochs"] == results["training"]["digits"]["epochs"]
    assert saved["vela_all_targets"]["models"] == ["digits"]
    assert saved["vela_all_targets"]["compilations"] == len(list((root / "targets").glob("*.toml")))
    assert saved["machine"]["cpu_model"] == cpu_model() and saved["machine"]["cpu_model"]


INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping\t: 8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: another CPU
"""


def test_cpu_model_names_the_processor_and_its_family(tmp_path):
    """The machine record names the CPU (a virtual machine's name can be bare; the family tells more)."""
    info = tmp_path / "cpuinfo"
    info.write_text(INTEL)
    assert cpu_model(info) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (GenuineIntel family 6 model 143 stepping 8)"
    info.write_text("Processor\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\n")
    assert cpu_model(info) == "ARMv7 Processor rev 4 (v7l)"
    assert cpu_model(tmp_path / "missing")  # no /proc/cpuinfo: what platform says


def test_cpu_use_reads_busy_and_idle_ticks_per_bin(tmp_path):
    stat = tmp_path / "stat"

    def ticks(busy: int, idle: int) -> None:  # user nice system idle iowait irq softirq steal
        stat.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")

    use = CpuUse(bin_seconds=10.0, stat=stat)
    for t, busy, idle in ((0.0, 0, 0), (5.0, 300, 700), (10.0, 600, 1400), (20.0, 2600, 1400)):
        ticks(busy, idle)
        use._sample()
        use.samples[-1] = (t, *use.samples[-1][1:])
    cpus = os.cpu_count()
    figures = use.figures()
    # 2,600 of 4,000 ticks busy: 0.65 of the cores over the run; 0.3 in the first 10 s, all in the next 10
    assert figures["busy_cores_mean"] == round(0.65 * cpus, 2)
    assert figures["busy_cores_per_bin"] == [round(0.3 * cpus, 2), float(cpus)]
    assert figures["idle_core_seconds"] == round(0.35 * cpus * 20.0, 1)
    for unreadable in ("intr 1 2 3\n", None):  # no cpu line; no file
        if unreadable is None:
            stat.unlink()
        else:
            stat.write_text(unreadable)
        use = CpuUse(stat=stat)
        use._sample()
        use._sample()
        assert use.samples == [] and use.figures() == {}
