"""Reliability: builds killed mid-stage, a damaged cache, bad input that leaves earlier artifacts
alone, and firmware assets that are byte-identical from one clean build to the next.

The subprocess builds run `invoke` from another current directory, on a project whose path
has spaces, and (where the kernel allows a private network namespace) with no network."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npubuild.errors import BuildError
from npubuild.pipeline import build

from .conftest import (
    CLEAN_ASSETS,
    ROOT,
    TARGET,
    background_job,
    join_background_job,
    make_project,
    tree_hashes,
)
from .test_kws_data import RECIPE, write_wav

pytestmark = pytest.mark.slow


def _no_network_prefix() -> list[str]:
    """`unshare -rn` runs a command in a network namespace with no interface but loopback."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn"]
    return []


def cli_project(dest: Path) -> Path:
    """A project copy that `invoke -r` can drive on its own (recipes, targets, tasks.py)."""
    root = make_project(dest)
    shutil.copy(ROOT / "tasks.py", root / "tasks.py")
    return root


def invoke_cmd(root: Path, *args: str) -> list[str]:
    return [*_no_network_prefix(), sys.executable, "-m", "invoke", "-r", str(root), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _session_processes(sid: int) -> list[int]:
    """Processes of session `sid` still running (zombies left out)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _survivors(sid: int) -> list[int]:
    """What is left of a build's session once its first process ended: orphans get a minute to end."""
    deadline = time.monotonic() + 60
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def run_and_signal(cmd: list[str], cwd: Path, stage: str, sig: int, hold: Path) -> tuple[int, str, list[int]]:
    """Start a build that holds itself once `stage` has written its outputs and before its stamp
    (`stages.hold_for_tests`), wait until it is held there, then send `sig` to its whole process group.
    Deterministic: the kill lands at that point however busy the machine is. Returns the exit code,
    the output, and the processes of the build that outlived it (none, if all is well)."""
    hold.unlink(missing_ok=True)
    env = {**_env(), "NPUBUILD_TEST_HOLD_STAGE": stage, "NPUBUILD_TEST_HOLD_FILE": str(hold)}
    with open(hold.with_suffix(".log"), "w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            while not hold.exists():
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the build ended before holding in {stage!r}:\n{log.read()[-3000:]}")
                time.sleep(0.1)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=300)
            survivors = _survivors(proc.pid)
        finally:
            if proc.poll() is None or _session_processes(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        return proc.returncode, log.read(), survivors


def _kws_assets(hashes: dict[str, str]) -> dict[str, str]:
    prefix = f"{TARGET}/kws/"
    return {k: v for k, v in hashes.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- reproducible output


@background_job("second_clean_build")
def _second_clean_build(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A clean smoke build in a fresh process, from another directory, without network, its models one
    after the other (the session's build ran them side by side, a process each)."""
    root = cli_project(tmp_path_factory.mktemp("second clean build") / "project")
    cwd = tmp_path_factory.mktemp("somewhere else")
    proc = subprocess.run(invoke_cmd(root, "build", "--profile", "smoke", "--target", TARGET, "--models-at-once", "1"),
                          cwd=cwd, capture_output=True, text=True, env=_env())
    return root, proc


@pytest.fixture(scope="session")
def second_clean_build(tmp_path_factory):
    return join_background_job("second_clean_build", tmp_path_factory)


def test_a_second_clean_build_gives_byte_identical_firmware_assets(smoke_project, second_clean_build):
    """The second clean build gives the same sha256 for every file under firmware_assets/ as the
    session's clean build: one model after the other as side by side."""
    assert CLEAN_ASSETS, "the session build recorded its assets"
    root, proc = second_clean_build
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    second = tree_hashes(root / "firmware_assets")
    assert len(second) >= 20
    differ = sorted(k for k in set(second) | set(CLEAN_ASSETS) if second.get(k) != CLEAN_ASSETS.get(k))
    assert not differ


# --------------------------------------------------------------------------- interrupted builds


@pytest.fixture(scope="session")
def interrupted(tmp_path_factory):
    return join_background_job("interrupted", tmp_path_factory)


@background_job("interrupted")
def _interrupted_job(tmp_path_factory):
    """A kws smoke build killed three times (SIGKILL in the data stage, SIGINT in training, SIGKILL
    in conversion, each once the stage's outputs are written but not its stamp), checked after each
    kill, then run to the end. The Ctrl-C lands on a build of kws and quality side by side (a
    process each): every process of the build must end with it."""
    root = cli_project(tmp_path_factory.mktemp("interrupted") / "project with spaces")
    cwd = tmp_path_factory.mktemp("cwd")
    cmd = invoke_cmd(root, "build", "--model", "kws", "--profile", "smoke", "--target", TARGET)
    both = invoke_cmd(root, "build", "--model", "kws,quality", "--profile", "smoke", "--target", TARGET)
    base = root / "build" / "smoke" / "kws" / "builtin"
    kills = []
    hold = tmp_path_factory.mktemp("hold") / "held"
    for stage, sig, build_cmd, stamp, output in [
        ("data kws", signal.SIGKILL, cmd, base / "data" / ".data-kws.stamp.json", base / "data" / "features.npz"),
        ("train kws", signal.SIGINT, both, base / "fp32" / ".train-kws.stamp.json", base / "fp32" / "model.h5"),
        ("convert kws prune_cluster", signal.SIGKILL, cmd,
         base / "prune_cluster" / ".convert-kws-prune_cluster.stamp.json", base / "prune_cluster" / "kws_int8.tflite"),
    ]:
        code, out, survivors = run_and_signal(build_cmd, cwd, stage, sig, hold)
        dry = subprocess.run([*cmd, "--dry-run"], cwd=cwd, capture_output=True, text=True, env=_env())
        kills.append({"marker": f"[{stage}] running", "code": code, "output": out, "stamp_exists": stamp.exists(),
                      "output_exists": output.exists(), "dry_run": dry.stdout, "survivors": survivors})
    final = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    return root, kills, final


def test_killed_builds_leave_nothing_a_later_build_accepts(interrupted):
    _, kills, _ = interrupted
    data, train, convert = kills
    assert data["code"] == -signal.SIGKILL and convert["code"] == -signal.SIGKILL
    # Ctrl-C: one line, the conventional exit code
    assert train["code"] == 130, train["output"][-2000:]
    assert "interrupted: finished stages are kept; run the same command again to continue" in train["output"]
    assert "Traceback" not in train["output"]
    assert "[data quality] running: never built" in train["output"]  # it was a build of both models
    assert not any(kill["survivors"] for kill in kills)  # no process of a killed build lives on
    for kill in kills:
        stage = kill["marker"].removesuffix(" running")
        assert kill["output_exists"] and not kill["stamp_exists"], stage  # killed between the two
        assert f"{stage} would run: never built" in kill["dry_run"], kill["dry_run"]
    # what finished before a kill is kept
    assert "[data kws] up to date" in train["dry_run"]
    assert "[pruning kws] up to date" in convert["dry_run"]


def test_the_next_build_completes_and_equals_an_uninterrupted_one(smoke_project, interrupted):
    root, _, final = interrupted
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "[convert kws prune_cluster] running: never built" in final.stdout
    assert "[train kws] up to date" in final.stdout
    assert _kws_assets(tree_hashes(root / "firmware_assets")) == _kws_assets(CLEAN_ASSETS)
    leftovers = [p for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".vela-")]
    assert not leftovers  # half-written files of the killed stages were cleared when they reran


def test_damaged_cache_is_detected_by_hash_and_rebuilt(interrupted):
    root, _, final = interrupted
    assert final.returncode == 0
    base = root / "build" / "smoke" / "kws" / "builtin" / "prune_cluster"
    int8 = base / "kws_int8.tflite"
    int8.write_bytes(int8.read_bytes()[: int8.stat().st_size // 2])  # truncated
    model_c = root / "firmware_assets" / TARGET / "kws" / "kws_model.c"
    model_c.write_text(model_c.read_text().replace("0x", "0X", 1))  # edited by hand
    (base / ".evaluate-kws-prune_cluster.stamp.json").write_text("{")  # a stamp cut short
    lines: list[str] = []
    build(root, model="kws", target=TARGET, profile="smoke", log=lines.append)
    assert ("[convert kws prune_cluster] running: output build/smoke/kws/builtin/prune_cluster/kws_int8.tflite "
            "changed since it was built") in lines
    assert ("[evaluate kws prune_cluster] running: stamp "
            "build/smoke/kws/builtin/prune_cluster/.evaluate-kws-prune_cluster.stamp.json is unreadable") in lines
    assert (f"[assets kws for {TARGET}] running: output firmware_assets/{TARGET}/kws/kws_model.c "
            "changed since it was built") in lines
    assert "[train kws] up to date" in lines
    assert _kws_assets(tree_hashes(root / "firmware_assets")) == _kws_assets(CLEAN_ASSETS)


# --------------------------------------------------------------------------- bad input


def speech_commands_folder(folder: Path) -> Path:
    """A minimal valid Speech Commands layout: one 1 s clip per keyword; `yes` validates, `no` tests."""
    rng = np.random.default_rng(1)
    for word in RECIPE.keywords:
        write_wav(folder / word / "00000000_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000))
    (folder / "validation_list.txt").write_text("yes/00000000_nohash_0.wav\n")
    (folder / "testing_list.txt").write_text("no/00000000_nohash_0.wav\n")
    return folder


def labelled_images(folder: Path) -> Path:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    rows = []
    for i, split in enumerate(["train", "val", "test"] * 2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},0,0,0,{split}")
    (folder / "labels.csv").write_text("file,blurry,too_dark,too_bright,noisy,split\n" + "\n".join(rows) + "\n")
    return folder


def _truncated_wav(d: Path) -> tuple[Path, str]:
    bad = speech_commands_folder(d) / "yes" / "00000000_nohash_0.wav"
    bad.write_bytes(bad.read_bytes()[:30])
    return bad, "not a readable WAV file"


def _not_a_wav(d: Path) -> tuple[Path, str]:
    bad = speech_commands_folder(d) / "bird" / "notes.wav"
    bad.parent.mkdir()
    bad.write_text("this is a text file")
    return bad, "not a readable WAV file"


def _empty_wav(d: Path) -> tuple[Path, str]:
    bad = speech_commands_folder(d) / "no" / "00000001_nohash_0.wav"
    write_wav(bad, np.zeros(0))
    return bad, "WAV file holds no samples"


def _empty_class(d: Path) -> tuple[Path, str]:
    folder = speech_commands_folder(d) / "stop"
    shutil.rmtree(folder)
    folder.mkdir()
    return folder, "no .wav clips for keyword 'stop'"


def _corrupt_image(d: Path) -> tuple[Path, str]:
    bad = labelled_images(d) / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return bad, "not a readable image"


def _labels_missing_column(d: Path) -> tuple[Path, str]:
    csv = labelled_images(d) / "labels.csv"
    csv.write_text(csv.read_text().replace(",noisy", "").replace(",0,0,0,", ",0,0,"))
    return csv, "missing column 'noisy'"


def _labels_unknown_file(d: Path) -> tuple[Path, str]:
    csv = labelled_images(d) / "labels.csv"
    csv.write_text(csv.read_text() + "ghost.png,1,0,0,0,test\n")
    return d / "ghost.png", "listed in labels.csv but not found"


DATA_FAULTS = {"truncated WAV": ("kws", _truncated_wav), "non-WAV file": ("kws", _not_a_wav),
               "WAV without samples": ("kws", _empty_wav), "empty class folder": ("kws", _empty_class),
               "corrupt image": ("quality", _corrupt_image),
               "labels.csv missing a column": ("quality", _labels_missing_column),
               "labels.csv naming an unknown file": ("quality", _labels_unknown_file)}


def _expect_clean_failure(smoke_project, problem: str, where: Path, run) -> None:
    """`run` fails with one line naming `where` and `problem`, and the earlier good build
    (every file of build/ and firmware_assets/) is untouched."""
    root, _, _ = smoke_project
    before = {d: tree_hashes(root / d) for d in ("build", "firmware_assets")}
    with pytest.raises(BuildError) as err:
        run()
    message = str(err.value)
    assert message.startswith(f"{where}") and problem in message and "\n" not in message, message
    assert {d: tree_hashes(root / d) for d in ("build", "firmware_assets")} == before


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_bad_data_is_one_line_and_leaves_earlier_artifacts(smoke_project, tmp_path, fault):
    model, make = DATA_FAULTS[fault]
    where, problem = make(tmp_path / "data")
    root, _, _ = smoke_project
    # --replace-assets: the user lets real data replace the built-in model's assets; the bad file must
    # still stop the build before anything is touched
    _expect_clean_failure(smoke_project, problem, where, lambda: build(
        root, model=model, target=TARGET, profile="smoke", data_dir=tmp_path / "data", replace_assets=True,
        log=lambda s: None))


def _edited_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    copy = make_project(tmp_path / "edited")
    path = copy / file
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    return copy


@pytest.mark.parametrize(("fault", "file", "old", "new", "problem"), [
    ("unknown technique in the recipe", "models/kws.toml", 'ship = "prune_cluster"', 'ship = "magic"', "'ship'"),
    ("malformed target", f"targets/{TARGET}.toml", "[memory.sram]", "[memory.sram", "not valid TOML"),
    ("target with an unknown accelerator", f"targets/{TARGET}.toml", '"ethos-u55-128"', '"ethos-u99-128"',
     "'accelerator'"),
])
def test_bad_recipe_or_target_is_one_line_and_leaves_earlier_artifacts(smoke_project, tmp_path, fault, file, old,
                                                                      new, problem):
    root, _, _ = smoke_project
    copy = _edited_copy(tmp_path, file, old, new)
    _expect_clean_failure(smoke_project, problem, copy / file, lambda: build(
        copy, model="kws", target=TARGET, profile="smoke", build_dir=root / "build",
        assets_dir=root / "firmware_assets", log=lambda s: None))


def test_unknown_target_missing_data_dir_not_a_tflite_unwritable_output(smoke_project, tmp_path):
    from npubuild.deploy import deploy

    root, _, _ = smoke_project
    _expect_clean_failure(smoke_project, "no such target", root / "targets" / "nope.toml", lambda: build(
        root, model="kws", target="nope", profile="smoke", log=lambda s: None))
    missing = tmp_path / "no such folder"
    _expect_clean_failure(smoke_project, "data directory does not exist", missing, lambda: build(
        root, model="kws", target=TARGET, profile="smoke", data_dir=missing, log=lambda s: None))
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"PK\x03\x04 a zip file, not a model")
    _expect_clean_failure(smoke_project, "not a TFLite", fake, lambda: deploy(
        root, tflite=fake, target=TARGET, assets_dir=root / "firmware_assets"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _expect_clean_failure(smoke_project, "not writable", blocker / "out", lambda: build(
        root, model="kws", target=TARGET, profile="smoke", assets_dir=blocker / "out", log=lambda s: None))


def test_stereo_other_rates_and_lengths_are_converted_and_said_once(tmp_path):
    from npubuild.kinds.kws import data as kws_data

    folder = speech_commands_folder(tmp_path / "data")
    rng = np.random.default_rng(3)
    write_wav(folder / "go" / "stereo.wav", rng.uniform(-0.3, 0.3, 2 * 44100), rate=44100, channels=2)
    write_wav(folder / "up" / "short.wav", rng.uniform(-0.3, 0.3, 11200))
    write_wav(folder / "up" / "long.wav", rng.uniform(-0.3, 0.3, 24000))
    lines: list[str] = []
    kws_data.build_features(RECIPE, RECIPE.profile("smoke"), folder, tmp_path / "features.npz", lines.append)
    assert lines[0] == (f"  {folder}: 13 clips read: 1 stereo averaged to mono; resampled to 16000 Hz: 1 at 44100 Hz; "
                        "1 shorter than 1 s zero-padded; 1 longer cut to their loudest second")
    assert len(lines) == 2 and lines[1].startswith(f"  {folder}: ") and "training clips rendered 2 times" in lines[1]
    assert np.load(tmp_path / "features.npz")["x_train"].shape[1:] == (49, 10)
