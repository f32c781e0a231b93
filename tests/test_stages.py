"""The cache: ordered up-to-date rules with reasons, stamps written last, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from npubuild.errors import BuildError
from npubuild.stages import Cache, Stage, atomic_output, write_text


def make_stage(tmp_path: Path, *, params=None, version=1, calls=None, fail=False) -> Stage:
    src = tmp_path / "in.txt"
    out = tmp_path / "out" / "result.txt"

    def action():
        if calls is not None:
            calls.append(1)
        if fail:
            raise RuntimeError("boom")
        write_text(out, src.read_text().upper())

    return Stage(name="shout", version=version, inputs=(src,), params=params or {"n": 1}, outputs=(out,),
                 action=action, tools=("numpy",))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    return tmp_path


def run(project, **kw):
    lines = []
    result = Cache(project, lines.append).run(make_stage(project, **kw))
    return result, lines


def test_first_run_then_up_to_date(project):
    calls = []
    first, _ = run(project, calls=calls)
    second, lines = run(project, calls=calls)
    assert (first.ran, first.reason) == (True, "never built")
    assert (second.ran, second.reason) == (False, "up to date")
    assert calls == [1]
    assert (project / "out" / "result.txt").read_text() == "HELLO"


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: (p / "in.txt").write_text("bye"), "changed input in.txt"),
    (lambda p: (p / "out" / "result.txt").unlink(), "missing output out/result.txt"),
    (lambda p: (p / "out" / "result.txt").write_text("HELLO!"), "output out/result.txt changed since it was built"),
    (lambda p: (p / "out" / ".shout.stamp.json").unlink(), "never built"),
    (lambda p: (p / "out" / ".shout.stamp.json").write_text("{"), "stamp out/.shout.stamp.json is unreadable"),
])
def test_reason_for_rerun(project, change, reason):
    run(project)
    change(project)
    result, _ = run(project)
    assert (result.ran, result.reason) == (True, reason)


def test_changed_param_and_version_are_named(project):
    run(project)
    assert run(project, params={"n": 2})[0].reason == "changed param n: 1 -> 2"
    assert run(project, params={"n": 2}, version=2)[0].reason == "stage version 1 -> 2"


def test_new_tool_version_is_named(project):
    run(project)
    stamp_path = project / "out" / ".shout.stamp.json"
    stamp = json.loads(stamp_path.read_text())
    stamp["tools"]["numpy"] = "0.0.1"
    stamp_path.write_text(json.dumps(stamp))
    assert run(project)[0].reason.startswith("new numpy version 0.0.1 -> ")


def test_failed_action_leaves_no_stamp(project):
    run(project)
    (project / "in.txt").write_text("changed")
    with pytest.raises(RuntimeError):
        run(project, fail=True)
    assert not (project / "out" / ".shout.stamp.json").exists()
    assert run(project)[0].reason == "never built"


def test_stamp_holds_relative_paths_only(project):
    run(project)
    text = (project / "out" / ".shout.stamp.json").read_text()
    assert str(project) not in text
    stamp = json.loads(text)
    assert set(stamp["inputs"]) == {"in.txt"} and set(stamp["outputs"]) == {"out/result.txt"}


def test_missing_input_is_one_clear_error(project):
    (project / "in.txt").unlink()
    with pytest.raises(BuildError, match="in.txt: input of stage 'shout' is missing"):
        run(project)


def test_dry_run_runs_nothing_and_says_why(project):
    calls = []
    result = Cache(project, [].append, dry_run=True).run(make_stage(project, calls=calls))
    assert calls == [] and not result.ran and result.reason == "would run: never built"
    assert not (project / "out" / "result.txt").exists()


def test_atomic_output_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"good")
    with pytest.raises(ValueError), atomic_output(path) as f:
        f.write(b"half")
        raise ValueError("interrupted")
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_second_build_on_the_same_folder_stops_with_a_clear_message(tmp_path):
    """A build holding the lock (here: another process) makes a second one stop at once; when the
    holder is killed outright, the operating system frees the lock and builds go on."""
    import signal
    import subprocess
    import sys

    from npubuild.errors import BuildError
    from npubuild.pipeline import build

    from .conftest import TARGET, make_project

    root = make_project(tmp_path / "project")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from npubuild.stages import BuildLock\n"
         f"with BuildLock(Path({str(root / 'build')!r})):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BuildError) as err:
            build(root, model="kws", target=TARGET, profile="smoke", log=lambda s: None)
        message = str(err.value)
        assert message.startswith(f"{root / 'build' / '.lock'}: another build (pid {holder.pid})")
        assert "\n" not in message and not (root / "build" / "smoke").exists()
        # a dry run only reads: it does not wait for the lock
        build(root, model="kws", target=TARGET, profile="smoke", dry_run=True, log=lambda s: None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from npubuild.stages import BuildLock

    with BuildLock(root / "build"):
        pass


@pytest.mark.parametrize("which", ["build_dir", "assets_dir"])
def test_unwritable_output_folder_fails_before_any_work(tmp_path, which):
    from npubuild.errors import BuildError
    from npubuild.pipeline import build

    from .conftest import TARGET, make_project

    root = make_project(tmp_path / "project")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(BuildError) as err:
        build(root, model="kws", target=TARGET, profile="smoke", log=lambda s: None, **{which: blocker / "out"})
    message = str(err.value)
    assert message.startswith(f"{blocker / 'out'}") and "writ" in message and "\n" not in message
    assert not (root / "build" / "smoke").exists()  # no stage ran


# --------------------------------------------------------------------------- code in the key


def test_code_files_follow_imports_and_bring_templates_only_to_template_users():
    from npubuild.stages import code_files

    names = lambda modules: {p.name for p in code_files(modules)}  # noqa: E731
    vela = names(("vela",))
    assert {"vela.py", "vela_ini.py", "config.py"} <= vela and "train.py" not in vela and "meta.h.j2" not in vela
    assets = names(("assets",))
    assert {"assets.py", "golden_vectors.py", "op_resolver.py", "tflite_file.py", "meta.h.j2", "model.c.j2"} <= assets
    assert "meta.h.j2" not in names(("train",)) and "train.py" in names(("train",))


def test_changed_code_reruns_the_stage_and_names_the_file(tmp_path, monkeypatch):
    """A stage's key holds its code: a copy of the package stands in for it, is edited, then restored."""
    import shutil

    from npubuild import stages

    package = tmp_path / "pkg" / "npubuild"
    shutil.copytree(stages.CODE_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stages, "CODE_ROOT", package)
    (tmp_path / "in.txt").write_text("hello")
    out = tmp_path / "out.txt"
    stage = Stage(name="render", version=1, inputs=(tmp_path / "in.txt",), params={}, outputs=(out,),
                  action=lambda: write_text(out, "x"), code=("assets", "kinds.kws.kind"))
    lines: list[str] = []
    Cache(tmp_path, lines.append).run(stage)
    assert Cache(tmp_path, lines.append).run(stage).reason == "up to date"
    template = package / "templates" / "meta.h.j2"
    original = template.read_text()
    template.write_text(original + "/* edited */\n")
    assert Cache(tmp_path, lines.append, dry_run=True).run(stage).reason == \
        "would run: changed code npubuild/templates/meta.h.j2"
    template.write_text(original)
    assert Cache(tmp_path, lines.append).run(stage).reason == "up to date"
    frontend = package / "kinds" / "kws" / "frontend.py"
    frontend.write_text(frontend.read_text() + "\n# edited\n")
    assert Cache(tmp_path, lines.append).run(stage).reason == "changed code npubuild/kinds/kws/frontend.py"


def test_no_import_cycles_in_the_package():
    """Modules never import each other in a circle (imports inside functions count too)."""
    from npubuild.stages import CODE_ROOT, _imported_modules, _module_file

    graph = {}
    for path in sorted(CODE_ROOT.rglob("*.py")):
        parts = path.relative_to(CODE_ROOT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = {m for m in _imported_modules(module, path)
                         if _module_file(m) and m != module and not module.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(trail[trail.index(n):] + [n])
            elif n not in state:
                visit(n, trail + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_invoke_clean_removes_the_build_folder_it_is_given(tmp_path):
    import shutil
    import subprocess
    import sys

    from .conftest import ROOT, make_project

    root = make_project(tmp_path / "project")
    shutil.copy(ROOT / "tasks.py", root / "tasks.py")
    default, elsewhere = root / "build", tmp_path / "elsewhere"
    for folder in (default, elsewhere):
        write_text(folder / "smoke" / "x.txt", "x")
    (root / "firmware_assets").mkdir()
    write_text(root / "firmware_assets" / "README.md", "kept")
    write_text(root / "firmware_assets" / "t" / "m.c", "generated")
    run = lambda *a: subprocess.run([sys.executable, "-m", "invoke", "-r", str(root), "clean", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    assert run("--build-dir", str(elsewhere)).returncode == 0
    assert not elsewhere.exists() and (default / "smoke" / "x.txt").is_file()
    assert run("--all").returncode == 0
    assert not default.exists() and [p.name for p in (root / "firmware_assets").iterdir()] == ["README.md"]


def test_python_floor_covers_what_the_code_imports():
    """config.py reads TOML with tomllib (Python 3.11+): requires-python must not claim less."""
    import re
    import tomllib

    from .conftest import ROOT

    claimed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(x) for x in re.search(r">=\s*([0-9.]+)", claimed).group(1).split("."))
    assert floor >= (3, 11)
    assert "import tomllib" in (ROOT / "npubuild" / "config.py").read_text()
