"""invoke bench: what its parts measure and how they share one results file."""

from __future__ import annotations

import json

import pytest

from npubuild.bench import run_benchmarks
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
