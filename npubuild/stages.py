"""Cached stages: a stage is data (inputs, params, outputs, action); a stamp records what built it.

A stage is up to date when its stamp exists and every rule below agrees; the
first rule that disagrees is the reason the stage reruns:

1. no stamp                  -> "never built"
2. an output is missing      -> "missing output X"
3. an output changed on disk -> "output X changed since it was built"
4. stage version / tool version / code / param / input changed -> named

"Code" is what produces the outputs: the source of the modules the stage's action runs (its
entry modules and every project module they import, at any depth, found by reading the
imports, the ones inside functions included) and, when one of them renders templates, every
template. Editing any of them reruns the stage and says which file changed.

The stamp is written last, after every output was renamed into place, so an
interrupted stage never looks finished.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from npubuild.errors import BuildError
from npubuild.terminal import say_through

_hash_memo: dict[tuple[str, int, int], str] = {}

# The package whose source stage keys include (a copy of it can be swapped in by tests).
CODE_ROOT = Path(__file__).resolve().parent
PACKAGE = CODE_ROOT.name


def sha256_file(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within this process."""
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hash_memo[memo_key] = h.hexdigest()
    return _hash_memo[memo_key]


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity of a folder's contents: every file's relative path, size and modification time."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of Python distributions, read without importing them."""
    versions = {}
    for tool in tools:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def _module_file(module: str) -> Path | None:
    """The source file of a project module ("npubuild.x.y"), or None for anything else."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = CODE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_IMPORTS_MEMO: dict[tuple[str, str, int, int], set[str]] = {}
# ast.parse from several threads at once (Vela stages run on a thread pool) trips CPython 3.11's
# "AST constructor recursion depth mismatch": one parse at a time.
_PARSE_LOCK = threading.Lock()


def _imported_modules(module: str, path: Path) -> set[str]:
    """Project modules that `module` (at `path`) imports anywhere in its source ("jinja2" included
    when it imports jinja2: it renders templates)."""
    st = path.stat()
    key = (module, str(path), st.st_size, st.st_mtime_ns)
    with _PARSE_LOCK:
        if key not in _IMPORTS_MEMO:
            _IMPORTS_MEMO[key] = _parse_imports(module, path)
        return set(_IMPORTS_MEMO[key])


def _parse_imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x`: x may be a module
    return {m for m in found if _module_file(m) is not None or m == "jinja2"}


def code_files(modules: tuple[str, ...]) -> list[Path]:
    """The source files of `modules` and of every project module they import (transitively), and every
    template when one of them loads templates (imports jinja2)."""
    seen: dict[str, Path] = {}
    todo = [m if m.startswith(PACKAGE + ".") else f"{PACKAGE}.{m}" for m in modules]
    templates = False
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None or module in seen:
            continue
        seen[module] = path
        imported = _imported_modules(module, path)
        templates = templates or "jinja2" in imported
        todo.extend(imported - set(seen) - {"jinja2"})
    files = set(seen.values())
    if templates:
        files.update(p for p in (CODE_ROOT / "templates").rglob("*") if p.is_file())
    return sorted(files)


def code_digests(modules: tuple[str, ...]) -> dict[str, str]:
    """{"npubuild/x.py": sha256} of `code_files(modules)` (paths relative to the package's parent)."""
    return {p.relative_to(CODE_ROOT.parent).as_posix(): sha256_file(p) for p in code_files(modules)}


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator[Any]:
    """Write `path` through a temporary file in the same folder, renamed into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path for tools that write a file by name; renamed to `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_stale_temporaries(outputs: tuple[Path, ...]) -> None:
    """Delete what a killed run of this stage left half-written next to its outputs (the
    temporary files of `atomic_output` / `atomic_path`, named `.<output name>.*.tmp*`)."""
    for path in outputs:
        if path.parent.is_dir():
            for tmp in path.parent.glob(f".{path.name}.*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_output(path, "w") as f:
        f.write(text)


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def hold_for_tests(stage_name: str) -> None:
    """A hook for the reliability tests (unset in real use): with NPUBUILD_TEST_HOLD_STAGE naming this
    stage, write the file NPUBUILD_TEST_HOLD_FILE and wait for a signal, at the worst moment for a kill:
    the stage's outputs are written, its stamp is not. Tests then kill the build at a known point, on a
    busy machine as on an idle one, instead of guessing how long a stage lasts. With
    NPUBUILD_TEST_HOLD_ONCE set, only the first process to get there holds."""
    if os.environ.get("NPUBUILD_TEST_HOLD_STAGE") != stage_name:
        return
    marker = Path(os.environ["NPUBUILD_TEST_HOLD_FILE"])
    if os.environ.get("NPUBUILD_TEST_HOLD_ONCE") and marker.exists():
        return  # held once already: a retry (Ray reruns a killed worker's chain) goes on
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C as on a terminal, even when the tests were started from a shell's background job
        # (which starts its children with SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    marker.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:  # until the test's signal ends (or interrupts) the build
        time.sleep(0.05)


class BuildLock:
    """One build at a time per build folder: an exclusive `flock` on `<build>/.lock`.

    The operating system drops the lock when the process ends, however it ends
    (SIGKILL included), so a killed build never leaves a stale lock behind. A second
    build on the same folder stops at once with a message naming the holder."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.path = folder / ".lock"
        self.enabled = enabled
        self._file = None

    def __enter__(self) -> BuildLock:
        if not self.enabled:
            return self
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # noqa: SIM115 (held for the whole build)
        except OSError as e:
            raise BuildError(f"{self.path.parent}: cannot write the build folder ({e.strerror})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise BuildError(f"{self.path}: another build (pid {holder}) is using this build folder; "
                             f"wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


@dataclass(frozen=True)
class Stage:
    """One step of the build. `action` must write every path in `outputs`."""

    name: str  # e.g. "train kws"
    version: int
    inputs: tuple[Path, ...]
    params: dict[str, Any]
    outputs: tuple[Path, ...]
    action: Callable[[], None]
    tools: tuple[str, ...] = ()
    stamp: Path = field(default=Path())
    # Modules the action runs ("train", "npubuild.vela"); what they import is found by `code_files`.
    code: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stamp == Path():
            slug = self.name.replace(" ", "-")
            object.__setattr__(self, "stamp", self.outputs[0].parent / f".{slug}.stamp.json")


@dataclass
class StageResult:
    name: str
    ran: bool
    reason: str
    seconds: float


class Cache:
    """Decides whether stages are up to date and runs them; paths in stamps are relative to `root`."""

    def __init__(self, root: Path, log: Callable[[str], None] = print, dry_run: bool = False) -> None:
        self.root = root
        self.log = log
        self.dry_run = dry_run
        self.results: list[StageResult] = []
        self._pending: set[Path] = set()  # dry run: outputs of stages that would run

    def _rel(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()

    def _describe(self, stage: Stage) -> dict[str, Any]:
        inputs = {}
        for path in stage.inputs:
            if not path.is_file():
                raise BuildError(f"{path}: input of stage '{stage.name}' is missing")
            inputs[self._rel(path)] = sha256_file(path)
        desc = {
            "stage": stage.name,
            "version": stage.version,
            "params": json.loads(canonical_json(stage.params)),
            "inputs": inputs,
            "tools": tool_versions(stage.tools),
            "code": code_digests(stage.code),
        }
        desc["key"] = hashlib.sha256(canonical_json(desc).encode()).hexdigest()
        return desc

    def why_stale(self, stage: Stage, desc: dict[str, Any]) -> str | None:
        try:
            stamp = json.loads(stage.stamp.read_text())
        except FileNotFoundError:
            return "never built"
        except (OSError, ValueError):
            return f"stamp {self._rel(stage.stamp)} is unreadable"
        for path in stage.outputs:
            rel = self._rel(path)
            if not path.is_file():
                return f"missing output {rel}"
            if stamp.get("outputs", {}).get(rel) != sha256_file(path):
                return f"output {rel} changed since it was built"
        if stamp.get("version") != desc["version"]:
            return f"stage version {stamp.get('version')} -> {desc['version']}"
        for tool, version in desc["tools"].items():
            if stamp.get("tools", {}).get(tool) != version:
                return f"new {tool} version {stamp.get('tools', {}).get(tool)} -> {version}"
        old_code = stamp.get("code", {})
        for rel in sorted(set(old_code) | set(desc["code"])):
            if old_code.get(rel) != desc["code"].get(rel):
                what = "new" if rel not in old_code else "removed" if rel not in desc["code"] else "changed"
                return f"{what} code {rel}"
        old_params = stamp.get("params", {})
        for key in sorted(set(old_params) | set(desc["params"])):
            if old_params.get(key) != desc["params"].get(key):
                return f"changed param {key}: {old_params.get(key)!r} -> {desc['params'].get(key)!r}"
        old_inputs = stamp.get("inputs", {})
        for rel in sorted(set(old_inputs) | set(desc["inputs"])):
            if old_inputs.get(rel) != desc["inputs"].get(rel):
                return f"changed input {rel}"
        if stamp.get("key") != desc["key"]:
            return "stamp key differs"
        return None

    def run_parallel(self, stages: list[Stage], workers: int | None = None) -> list[StageResult]:
        """Run independent stages (e.g. Vela for several targets) on a thread pool; each runs
        its tool in a subprocess. Results are recorded in the order given."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(workers or os.cpu_count() or 1, len(stages) or 1))
        if workers == 1:
            return [self.run(stage) for stage in stages]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self.run, stage, False) for stage in stages]
            results = [f.result() for f in futures]
        self.results.extend(results)
        return results

    def run(self, stage: Stage, record: bool = True, position: str = "") -> StageResult:
        """Run `stage` unless it is up to date; `position` ("3/40") tells where it stands in a longer run."""
        pending = [p for p in stage.inputs if p in self._pending]
        if pending:  # dry run only: an earlier stage would rebuild this input
            reason = f"input {self._rel(pending[0])} would be rebuilt"
        else:
            desc = self._describe(stage)
            reason = self.why_stale(stage, desc)
        if reason is None:
            result = StageResult(stage.name, False, "up to date", 0.0)
            self.log(f"[{stage.name}] up to date")
        elif self.dry_run:
            self._pending.update(stage.outputs)
            self.log(f"[{stage.name}] would run: {reason}")
            result = StageResult(stage.name, False, f"would run: {reason}", 0.0)
        else:
            self.log(f"[{stage.name}] running{f' ({position})' if position else ''}: {reason}")
            stage.stamp.unlink(missing_ok=True)
            remove_stale_temporaries(stage.outputs)
            start = time.perf_counter()
            with say_through(self.log):
                stage.action()
            hold_for_tests(stage.name)
            seconds = time.perf_counter() - start
            outputs = {}
            for path in stage.outputs:
                if not path.is_file():
                    raise BuildError(f"{path}: stage '{stage.name}' did not write this output")
                outputs[self._rel(path)] = sha256_file(path)
            write_json(stage.stamp, {**desc, "outputs": outputs})
            self.log(f"[{stage.name}] done in {seconds:.1f} s")
            result = StageResult(stage.name, True, reason, seconds)
        if record:
            self.results.append(result)
        return result
