"""`invoke fit`: the choice (pure, no TensorFlow), the candidates and their chain plan; then the digits
model fitted on the smoke profile to two targets (one tiny, so some candidates do not fit), a second
fit that runs nothing, `report --check` on the fit; and the same search on a real local Ray cluster
(a head and a worker process on 127.0.0.1), every artifact compared with a local run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from npubuild.candidates import candidate_paths, candidate_stages, candidates
from npubuild.chains import compare_on_ray
from npubuild.config import load_recipe
from npubuild.errors import OverBudget
from npubuild.fit import Bound, check_fits, choose, figures_of, fit, pareto_front
from npubuild.pipeline import build, figures_file

from .conftest import ROOT, code_env, make_project

TINY = "tiny-u55"


def rec(id, val, flash, sram=1000, ms=1.0, over=None):
    over = over or {}
    return {"id": id, "val_accuracy": val, "flash_bytes": flash, "sram_bytes": sram, "inference_ms": ms,
            "budget_problems": over, "fits_budget": not over, "budgets": {"sram": 10_000, "flash": 10_000}}


def test_choice_is_the_cheapest_that_fits_within_the_accuracy_bound():
    records = [rec("a", 0.95, 9000), rec("b", 0.945, 5000), rec("c", 0.90, 1000), rec("d", 0.96, 3000,
                                                                                        over={"flash": 20})]
    choice = choose(records, Bound(max_drop=1.0), "flash")
    assert choice.best_val_accuracy == 0.96 and choice.floor == 0.95
    assert choice.chosen["id"] == "a"  # b is 1.5 points below the best (d, which does not fit)
    assert [r["fits"] for r in records] == [True, False, False, False]
    assert records[3]["why_not"] == ["flash over budget by 20 bytes"]
    assert "below 0.9500 by 5.00 points" in records[2]["why_not"][0]
    assert choose(records, Bound(max_drop=2.0), "flash").chosen["id"] == "b"
    assert choose(records, Bound(min_accuracy=0.85), "flash").chosen["id"] == "c"


def test_objective_and_ties():
    records = [rec("a", 0.9, 100, sram=500, ms=2.0), rec("b", 0.91, 300, sram=400, ms=1.0), rec("c", 0.92, 100)]
    assert choose(records, Bound(max_drop=5), "flash").chosen["id"] == "c"  # tie on flash: more accurate
    assert choose(records, Bound(max_drop=5), "sram").chosen["id"] == "b"
    assert choose(records, Bound(max_drop=5), "latency").chosen["id"] == "c"


def test_nothing_fits_names_the_closest_and_by_how_much():
    records = [rec("a", 0.9, 100, over={"flash": 5000}), rec("b", 0.9, 100, over={"flash": 200}),
               rec("c", 0.5, 100)]
    choice = choose(records, Bound(max_drop=1.0), "flash")
    assert choice.chosen is None and choice.closest["id"] == "b"
    assert choice.message == "nothing fits: closest is b: flash over budget by 200 bytes"


def test_pareto_front():
    records = [rec("a", 0.9, 100), rec("b", 0.95, 200), rec("c", 0.9, 150), rec("d", 0.97, 500), rec("e", 0.94, 300)]
    assert pareto_front(records, "flash_bytes") == ["a", "b", "d"]


def test_candidates_share_what_their_settings_allow(tmp_path):
    recipe = load_recipe(ROOT / "models" / "digits.toml")
    found = candidates(recipe, ["ptq", "prune", "prune_cluster"], sparsities=(0.75,), clusters=(4,))
    assert [c.id for c in found] == ["ptq", "prune", "prune target_sparsity=0.75", "prune_cluster",
                                     "prune_cluster target_sparsity=0.75", "prune_cluster clusters=4",
                                     "prune_cluster clusters=4 target_sparsity=0.75"]
    base = tmp_path / "b"
    default = candidate_paths(base, "digits", found[3])
    assert default.int8("prune_cluster") == base / "prune_cluster" / "digits_int8.tflite"  # the build's own
    fewer = candidate_paths(base, "digits", found[5])
    assert fewer.keras(("prune",)) == base / "steps" / "prune" / "model.h5"  # clusters do not shape pruning
    assert fewer.keras(("prune", "cluster")).parts[-5] == "fit"
    assert fewer.recipe_dir("prune_cluster") != default.recipe_dir("prune_cluster")
    quality = load_recipe(ROOT / "models" / "quality.toml")
    assert candidates(quality, ["ptq"])[1].changed == (("image.alpha", 0.5),)  # the kind's width multiplier


def test_chain_plan_gives_each_stage_one_chain_and_no_cycle(tmp_path):
    from npubuild.chains import plan_chains
    from npubuild.config import load_target

    recipe = load_recipe(ROOT / "models" / "digits.toml")
    tgt = load_target(ROOT / "targets" / "corstone-300-u55-128.toml")
    per = [candidate_stages(recipe, "smoke", None, tmp_path, c, [tgt])
           for c in candidates(recipe, None, sparsities=(0.75,), clusters=(4,))]
    chains = plan_chains(per)
    stamps = [s for c in chains for s in c.stamps]
    assert len(stamps) == len(set(stamps)) == len({s.stamp for stages in per for s in stages})
    assert all(w < i for i, c in enumerate(chains) for w in c.waits)
    assert len(chains) > 8


# --------------------------------------------------------------------------- end to end


def tiny_target(root: Path) -> None:
    """Corstone-300 with 20 KiB of flash for models: the smoke digits at 8 bit (36 KiB) does not fit."""
    text = (root / "targets" / "corstone-300-u55-128.toml").read_text()
    text = text.replace('name = "corstone-300-u55-128"', f'name = "{TINY}"')
    text = text.replace("bytes = 33_554_432", "bytes = 20_480").replace("ml_share = 0.125", "ml_share = 1.0")
    (root / "targets" / f"{TINY}.toml").write_text(text)


SEARCH = {"profile": "smoke", "techniques": ["ptq", "prune", "prune_cluster"], "sparsities": (), "clusters": (4,),
          "bound": Bound(max_drop=50.0)}


@pytest.mark.slow
def test_fit_digits_on_two_targets_then_nothing_reruns(tmp_path):
    root = make_project(tmp_path / "project", examples=True)
    tiny_target(root)
    lines: list[str] = []
    tiny = fit(root, model="digits", target=TINY, log=lines.append, **SEARCH)
    fitted = {r["id"]: r for r in tiny["candidates"]}
    assert list(fitted) == ["ptq", "prune", "prune_cluster", "prune_cluster clusters=4"]
    assert not fitted["ptq"]["fits"] and fitted["ptq"]["why_not"][0].startswith("flash over budget by ")
    assert fitted["prune_cluster clusters=4"]["fits"]
    assert tiny["chosen"] == min((r for r in fitted.values() if r["fits"]), key=lambda r: r["flash_bytes"])["id"]
    written = json.loads((root / "firmware_assets" / "fit" / f"digits-{TINY}.json").read_text())
    for r in written["candidates"]:
        assert {"settings", "val_accuracy", "test_accuracy", "sram_bytes", "flash_bytes", "cycles", "inference_ms",
                "fits", "why_not"} <= set(r)
        assert 0 < r["val_accuracy"] <= 1 and 0 < r["test_accuracy"] <= 1
    # the recipe's own settings are the normal build's artifacts; the evaluation file is the build's
    evaluation = root / "build" / "smoke" / "digits" / "builtin" / "ptq" / "evaluation.json"
    assert "validation" not in evaluation.read_text() and (evaluation.parent / "validation.json").is_file()

    himax = fit(root, model="digits", target="himax-wiseeye2", log=lines.append, **SEARCH)
    assert all(r["fits"] for r in himax["candidates"])
    ran = [r.name for r in himax["results"] if r.ran]
    assert ran and all(name.startswith("compile ") for name in ran)  # only Vela for the new target
    summary = build(root, model="digits", target="himax-wiseeye2", profile="smoke", log=lines.append)
    assert {r.name.split()[0] for r in summary.results if r.ran} == {"assets", "report", "image"}  # the fit's

    again = fit(root, model="digits", target=TINY, log=lines.append, **SEARCH)
    assert not [r.name for r in again["results"] if r.ran]
    png = root / "firmware_assets" / "fit" / f"digits-{TINY}.png"
    assert again["candidates"] == tiny["candidates"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --with: another model's figures file on the target takes 4 KiB of its flash
    other = figures_file(root / "firmware_assets", TINY, "other")
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(asdict(figures_of("other", {**tiny["candidates"][0]["memory"],
                                                              "flash_bytes": 4096}))))
    shared = fit(root, model="digits", target=TINY, with_models=["other"], log=lines.append, **SEARCH)
    assert not [r.name for r in shared["results"] if r.ran]
    for alone, together in zip(tiny["candidates"], shared["candidates"], strict=True):
        assert together["total_flash_bytes"] == alone["total_flash_bytes"] + 4096
        assert together["fits"] == (alone["total_flash_bytes"] + 4096 <= 20_480)
    fit(root, model="digits", target=TINY, log=lines.append, **SEARCH)

    assert len(check_fits(root)) == 2  # report --check: both choices still fit
    target_file = root / "targets" / f"{TINY}.toml"
    target_file.write_text(target_file.read_text().replace("bytes = 20_480", "bytes = 4_096"))
    with pytest.raises(OverBudget, match="no longer fits tiny-u55: flash over budget by"):
        check_fits(root)

    with pytest.raises(OverBudget, match=r"nothing fits: closest is .*flash over budget by \d+ bytes"):
        fit(root, model="digits", target=TINY, log=lines.append, **SEARCH)
    assert json.loads((root / "firmware_assets" / "fit" / f"digits-{TINY}.json").read_text())["chosen"] is None

    toml = root / "models" / "digits.toml"
    fit(root, model="digits", target="himax-wiseeye2", log=lines.append, apply=True, objective="flash", **SEARCH)
    assert 'ship = "prune_cluster"' in toml.read_text() and "clusters = 4" in toml.read_text()
    assert toml.read_text().startswith("# Your own model through the whole tree")


# --------------------------------------------------------------------------- Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(folder: Path) -> dict[str, str]:
    """sha256 of every artifact; stamps by their key (their outputs' digests include train.json, the
    training log with its seconds, the one file two runs of a stage never share), train.json left out."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in (".lock", "train.json"):
            continue
        rel = p.relative_to(folder).as_posix()
        found[rel] = (json.loads(p.read_text())["key"] if p.name.endswith(".stamp.json")
                      else hashlib.sha256(p.read_bytes()).hexdigest())
    return found


@pytest.mark.slow
def test_fit_and_compare_on_a_local_ray_cluster_match_a_local_run(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'npubuild[ray]')")
    from npubuild.pipeline import compare

    port = _free_port()
    hold = tmp_path / "held"
    # the Ray workers hold once, in the killed run's first chain stage, for the test to kill them there
    env = {**code_env(), "NPUBUILD_TEST_HOLD_STAGE": "convert digits ptq", "NPUBUILD_TEST_HOLD_FILE": str(hold),
           "NPUBUILD_TEST_HOLD_ONCE": "1"}
    cli = [sys.executable, "-m", "ray.scripts.scripts"]
    common = ["--num-cpus=1", "--disable-usage-stats"]
    search = {**SEARCH, "techniques": ["ptq", "pcqat"]}  # pcqat: QAT's Keras file names its layers
    try:
        subprocess.run([*cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=false", *common], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", *common],
                       env=env, check=True, capture_output=True)
        # a worker killed in the middle of a chain, its stage's outputs written and its stamp not: Ray
        # retries the chain, and the unstamped stage reruns
        killed_run = make_project(tmp_path / "killed", examples=True)
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_the_held_worker, args=(hold, stop, killed), daemon=True)
        killer.start()
        try:
            fit(killed_run, model="digits", target="corstone-300-u55-128", ray=f"127.0.0.1:{port}",
                log=lambda line: None, **search)
        finally:
            stop.set()
            killer.join()
        assert killed, "no Ray worker held in the stage to be killed"
        on_ray = make_project(tmp_path / "ray", examples=True)
        start = time.perf_counter()
        remote = fit(on_ray, model="digits", target="corstone-300-u55-128", ray=f"127.0.0.1:{port}",
                     log=lambda line: None, **search)
        ray_seconds = time.perf_counter() - start
        assert len(ray.nodes()) >= 2
        compare(on_ray, model="digits", targets="corstone-300-u55-128", profile="smoke",
                techniques=["ptq", "pcqat"], run_models=compare_on_ray(f"127.0.0.1:{port}"), log=lambda line: None)
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        subprocess.run([*cli, "stop", "--force"], env=env, capture_output=True)
    here = make_project(tmp_path / "local", examples=True)
    start = time.perf_counter()
    local = fit(here, model="digits", target="corstone-300-u55-128", log=lambda line: None, **search)
    local_seconds = time.perf_counter() - start
    compare(here, model="digits", targets="corstone-300-u55-128", profile="smoke",
            techniques=["ptq", "pcqat"], log=lambda line: None)
    print(f"fit on Ray: {ray_seconds:.1f} s, locally: {local_seconds:.1f} s")
    assert remote["candidates"] == local["candidates"]
    assert sum(r.ran for r in remote["results"]) == sum(r.ran for r in local["results"]) > 0
    for folder in ("build", "firmware_assets"):
        assert _tree(on_ray / folder) == _tree(here / folder)
    assert _tree(killed_run / "build") == _tree(here / "build")
    assert _tree(killed_run / "firmware_assets") == {k: v for k, v in _tree(here / "firmware_assets").items()
                                                     if k.startswith("fit/")}


def _kill_the_held_worker(hold: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL the Ray worker that holds in its stage (`stages.hold_for_tests` wrote its pid to `hold`)."""
    while not stop.is_set() and not killed:
        text = hold.read_text() if hold.exists() else ""
        if text.endswith("\n"):  # the pid is written whole
            os.kill(int(text), signal.SIGKILL)
            killed.append(int(text))
            return
        stop.wait(0.1)
