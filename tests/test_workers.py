"""Models side by side (workers.py): a process per job, their lines and values in the build's process,
the first error raised after the others stopped at their next stage, children that end with the
build. Plain Python jobs here; the session's smoke build runs kws and quality this way."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npubuild.errors import BuildError
from npubuild.workers import Job, Stopped, _prefixed, run_side_by_side


def say_and_return(value: str, *, log, should_stop) -> str:
    log(f"[stage {value}] running: never built")
    log(f"  made {value}")
    return value.upper()


def fail_at_once(path: str, *, log, should_stop) -> None:
    raise BuildError(f"{path}: not a readable data file")


def stage_loop(marker: str, *, log, should_stop) -> None:
    """Stages of 0.05 s until told to stop (at most 120 s: then the test fails on its return)."""
    for i in range(2400):
        if should_stop():
            Path(marker).write_text(str(i))
            raise Stopped
        time.sleep(0.05)
    return "never stopped"


def crash(_: str, *, log, should_stop) -> None:
    return {}["missing"]


def die(_: str, *, log, should_stop) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_forever(pid_file: str, *, log, should_stop) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)


def test_values_come_back_in_order_and_lines_name_their_job():
    lines: list[str] = []
    jobs = [Job(name, say_and_return, (name,)) for name in ("kws", "quality", "digits")]
    assert run_side_by_side(jobs, lines.append, slots=2) == ["KWS", "QUALITY", "DIGITS"]
    for name in ("kws", "quality", "digits"):
        assert f"[stage {name}] running: never built" in lines  # stage lines as they are
        assert f"  {name}: made {name}" in lines  # what a stage says, after its indent
    assert _prefixed("kws", "kws: no indent") == "kws: kws: no indent"


def test_a_failure_stops_the_others_at_their_next_stage_and_is_raised(tmp_path):
    marker = tmp_path / "stopped"
    lines: list[str] = []
    jobs = [Job("looping", stage_loop, (str(marker),)), Job("broken", fail_at_once, ("broken.npz",))]
    with pytest.raises(BuildError, match=r"^broken.npz: not a readable data file$"):
        run_side_by_side(jobs, lines.append, slots=2)
    assert marker.is_file()  # the looping job saw the stop between two of its stages
    assert "broken failed; waiting for the running stage of looping to finish" in lines


def test_a_crash_is_raised_with_its_traceback_and_a_killed_child_named():
    with pytest.raises(RuntimeError, match=r"building crashing failed; its traceback:[\s\S]*KeyError: 'missing'"):
        run_side_by_side([Job("crashing", crash, ("",))], lambda s: None, slots=1)
    with pytest.raises(BuildError, match=r"^building killed: its process ended with signal 9$"):
        run_side_by_side([Job("killed", die, ("",))], lambda s: None, slots=1)


SCRIPT = """
import sys
from npubuild.workers import Job, run_side_by_side
from tests.test_workers import sleep_forever
run_side_by_side([Job("a", sleep_forever, (sys.argv[1],)), Job("b", sleep_forever, (sys.argv[2],))], print, 2)
"""


def test_children_end_with_the_build_however_it_ends(tmp_path):
    """SIGKILL to the build's process alone (not its group): its model processes end too."""
    pids = [tmp_path / "a.pid", tmp_path / "b.pid"]
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, pids)], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all(p.is_file() and p.read_text() for p in pids):
            assert parent.poll() is None and time.monotonic() < deadline, "the children never started"
            time.sleep(0.1)
        children = [int(p.read_text()) for p in pids]
        parent.kill()
        parent.wait()
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "a child outlived the build"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # whatever is left of the test's process group
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
