"""Shared builders: a throwaway copy of the project, and one smoke-profile build per session."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "corstone-300-u55-128"
# sha256 of every file under the session smoke build's firmware_assets/, taken right after it
# was built (later tests add targets to that folder).
CLEAN_ASSETS: dict[str, str] = {}


def tree_hashes(folder: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def make_project(dest: Path) -> Path:
    """A project folder with this repository's recipes and targets, and nothing built."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "targets"):
        shutil.copytree(ROOT / sub, dest / sub)
    return dest


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory):
    """A project built once with the smoke profile for both models: (root, summary, log lines)."""
    from npubuild.pipeline import build

    root = make_project(tmp_path_factory.mktemp("smoke") / "project with spaces")
    lines: list[str] = []
    summary = build(root, model="all", target=TARGET, profile="smoke", log=lines.append)
    CLEAN_ASSETS.update(tree_hashes(root / "firmware_assets"))
    return root, summary, lines


def report_model(report: dict, name: str) -> dict:
    return next(m for m in report["models"] if m["name"] == name)
