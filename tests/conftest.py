"""Shared builders: a throwaway copy of the project, and one smoke-profile build per session."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "corstone-300-u55-128"
# sha256 of every file under the session smoke build's firmware_assets/, taken right after it
# was built (later tests add targets to that folder).
CLEAN_ASSETS: dict[str, str] = {}


# firmware_assets/last_build.json records the stage times of the last run: the one generated
# file that differs between two runs of the same build (index.html leaves the times out).
def tree_hashes(folder: Path, skip: tuple[str, ...] = (".lock", "last_build.json")) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def code_env() -> dict[str, str]:
    """This process's environment with this repository first on PYTHONPATH: a subprocess imports the
    code under test, not an installed copy."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def make_project(dest: Path, examples: bool = False) -> Path:
    """A project folder with this repository's recipes and targets, and nothing built; the worked
    example of a model of your own (models/digits.*) only with `examples`."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = () if examples else ("digits.*",)
    shutil.copytree(ROOT / "models", dest / "models", ignore=shutil.ignore_patterns(*skip))
    shutil.copytree(ROOT / "targets", dest / "targets")
    return dest


# Subprocess builds (clean rebuilds, killed builds) spend most of their time in one core's
# Python; they run in threads beside the session's smoke build when a selected test needs them.
_BACKGROUND: dict[str, Callable] = {}  # fixture name -> job(tmp_path_factory)
_WANTED: set[str] = set()
_RUNNING: dict[str, tuple[threading.Thread, dict]] = {}


def background_job(name: str):
    """Register `job(tmp_path_factory)` as the value of session fixture `name`, started at the
    beginning of the session's smoke build when a selected test uses that fixture."""
    def register(job: Callable) -> Callable:
        _BACKGROUND[name] = job
        return job
    return register


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(session, config, items):
    _WANTED.update(n for item in items for n in getattr(item, "fixturenames", ()) if n in _BACKGROUND)


def start_background_jobs(tmp_path_factory, names=None) -> None:
    for name in sorted(names or _WANTED):
        if name not in _RUNNING:
            box: dict = {}

            def run(job=_BACKGROUND[name], box=box):
                try:
                    box["value"] = job(tmp_path_factory)
                except BaseException as e:  # re-raised in the test that waits for it
                    box["error"] = e

            thread = threading.Thread(target=run, name=name, daemon=True)
            thread.start()
            _RUNNING[name] = (thread, box)


def join_background_job(name: str, tmp_path_factory):
    start_background_jobs(tmp_path_factory, [name])
    thread, box = _RUNNING[name]
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory):
    """A project built once with the smoke profile for both models: (root, summary, log lines)."""
    from npubuild.pipeline import build

    start_background_jobs(tmp_path_factory)
    root = make_project(tmp_path_factory.mktemp("smoke") / "project with spaces")
    lines: list[str] = []
    summary = build(root, model="all", target=TARGET, profile="smoke", log=lines.append)
    CLEAN_ASSETS.update(tree_hashes(root / "firmware_assets"))
    return root, summary, lines


def report_model(report: dict, name: str) -> dict:
    return next(m for m in report["models"] if m["name"] == name)
