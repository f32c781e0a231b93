"""Models built side by side: one process per model's stage chain, the build's log fed by all of them.

One model's chain leaves part of the cores idle (training, pruning, conversion and evaluation
each keep fewer cores busy than a machine has), so a build of several models runs their chains at
once, each in a process of its own (TensorFlow holds one model's graph and threads per process).
The parent process prints what the children say, in the order they say it; each child's progress
bars (on a terminal) are drawn by the parent, one line per model.

A failure in one model stops the others as make does: the stages running finish (and are kept),
no new stage starts, and the first error is raised. Ctrl-C stops every child at once. A child
dies with the parent however the parent ends (PR_SET_PDEATHSIG), so a killed build leaves no
orphan still writing into the build folder.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npubuild.errors import BuildError


class Stopped(Exception):
    """Raised in a child between stages after another model failed."""


@dataclass(frozen=True)
class Job:
    """`function(*args, log=..., should_stop=...)` in a child process; `label` prefixes its lines."""

    label: str
    function: Callable[..., Any]
    args: tuple


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent ends (nothing elsewhere)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ignore_ctrl_c() -> None:
    """The initializer of a stage's worker pools: Ctrl-C is for the process that owns the pool (it
    stops its pool on the way out); a worker that took it too would print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _RemoteBar:
    """A progress bar drawn by the parent: updates are sent at most a few times a second."""

    def __init__(self, send: Callable[[tuple], None], key: int, total: int, what: str) -> None:
        self.send, self.key, self.total, self.what = send, key, total, what
        self.n, self._sent = 0, 0.0
        self.send(("bar", self.key, self.what, 0, self.total))

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._sent >= 0.25:
            self._sent = now
            self.send(("bar", self.key, self.what, self.n, self.total))

    def close(self) -> None:
        self.send(("bar_close", self.key))


def _child(index: int, job: Job, messages, stop, terminal: bool) -> None:
    _die_with_parent()

    def send(message: tuple) -> None:
        messages.put((index, *message))

    def log(line: str) -> None:
        send(("log", line))

    from npubuild.terminal import set_bar_factory

    keys = iter(range(1 << 30))
    set_bar_factory((lambda total, what: _RemoteBar(send, next(keys), total, what)) if terminal else None)
    try:
        try:
            value = job.function(*job.args, log=log, should_stop=stop.is_set)
        except Stopped:
            send(("stopped",))
        except KeyboardInterrupt:
            send(("interrupted",))
        except BuildError as e:
            send(("error", e))
        except BaseException:  # noqa: BLE001 (reported by the parent with its traceback)
            send(("crash", traceback.format_exc()))
        else:
            send(("done", value))
        finally:
            # One Ctrl-C is enough (no traceback from a second one while this process ends). What its
            # modules registered to run at exit runs now (int8_runner shuts its worker pool down there):
            # a multiprocessing child skips atexit, and would wait for those workers forever.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()
    except KeyboardInterrupt:  # Ctrl-C between the job's end and the line above: the parent knows already
        pass


def _prefixed(label: str, line: str) -> str:
    """Stage lines ("[train kws] ...") name their model; other lines get it after their indent."""
    if line.startswith("["):
        return line
    body = line.lstrip(" ")
    return f"{line[:len(line) - len(body)]}{label}: {body}"


class _Bars:
    """The children's progress bars, one tqdm line each, below the log."""

    def __init__(self) -> None:
        self.bars: dict[tuple[int, int], Any] = {}

    def show(self, index: int, key: int, what: str, n: int, total: int, label: str) -> None:
        from tqdm import tqdm

        bar = self.bars.get((index, key))
        if bar is None:
            bar = self.bars[(index, key)] = tqdm(total=total, desc=f"  {label}: {what.strip()}", leave=False,
                                                 dynamic_ncols=True, unit_scale=True, position=index)
        bar.update(n - bar.n)

    def close(self, index: int, key: int | None = None) -> None:
        for k in [k for k in self.bars if k[0] == index and (key is None or k[1] == key)]:
            self.bars.pop(k).close()

    def write(self, log: Callable[[str], None], line: str) -> None:
        if not self.bars:
            log(line)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode():
            log(line)


def run_side_by_side(jobs: list[Job], log: Callable[[str], None], slots: int) -> list[Any]:
    """Run `jobs` in child processes, at most `slots` at once, in the order given; return their values
    in that order. Raises the first BuildError a job raised (after the running ones stopped), or
    KeyboardInterrupt."""
    from npubuild.terminal import on_terminal

    ctx = multiprocessing.get_context("spawn")
    messages, stop = ctx.Queue(), ctx.Event()
    terminal = on_terminal()
    bars = _Bars()
    pending = list(range(len(jobs)))
    running: dict[int, Any] = {}
    finished: list[Any] = []  # processes that sent their last word (and are ending)
    values: dict[int, Any] = {}
    failure: BaseException | None = None

    def fail(index: int, error: BaseException) -> None:
        nonlocal failure
        if failure is None:
            failure = error
            stop.set()
            others = [jobs[i].label for i in running if i != index]
            if others:
                bars.write(log, f"{jobs[index].label} failed; waiting for the running stage of "
                                f"{', '.join(others)} to finish")

    def handle(index: int, what: str, *rest) -> None:
        if what == "log":
            bars.write(log, _prefixed(jobs[index].label, rest[0]))
        elif what == "bar":
            if terminal:
                bars.show(index, *rest, label=jobs[index].label)
        elif what == "bar_close":
            bars.close(index, rest[0])
        else:  # the job's last word
            bars.close(index)
            finished.append(running.pop(index))
            if what == "done":
                values[index] = rest[0]
            elif what == "error":
                fail(index, rest[0])
            elif what == "crash":
                fail(index, RuntimeError(f"building {jobs[index].label} failed; its traceback:\n{rest[0]}"))
            elif what == "interrupted":
                fail(index, KeyboardInterrupt())

    try:
        while pending or running:
            while pending and len(running) < slots and failure is None:
                index = pending.pop(0)
                running[index] = ctx.Process(target=_child, args=(index, jobs[index], messages, stop, terminal),
                                             name=f"npubuild {jobs[index].label}")
                running[index].start()
            if failure is not None:
                pending.clear()
            try:
                handle(*messages.get(timeout=1.0))
            except queue_module.Empty:
                _check_alive(running, messages, handle, fail, jobs)
    except KeyboardInterrupt:
        _interrupt(running)
        raise
    finally:
        for index in list(running):
            bars.close(index)
        for process in finished:
            process.join(60.0)
            if process.exitcode is None:
                process.kill()
                process.join()
    if isinstance(failure, KeyboardInterrupt):
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return [values[i] for i in range(len(jobs))]


def _check_alive(running: dict[int, Any], messages, handle, fail, jobs: list[Job]) -> None:
    """A child that ended without its last word (killed, out of memory) fails the build."""
    for index, process in list(running.items()):
        if process.exitcode is None:
            continue
        deadline = time.monotonic() + 5.0  # what it sent before it ended may still be in the pipe
        while index in running and time.monotonic() < deadline:
            try:
                handle(*messages.get(timeout=0.2))
            except queue_module.Empty:
                continue
        if index in running:
            running.pop(index).join()
            code = process.exitcode
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            fail(index, BuildError(f"building {jobs[index].label}: its process ended with {how}"))


def _interrupt(running: dict[int, Any]) -> None:
    """Ctrl-C: the children of a terminal got it too; a signal to the parent alone is passed on."""
    deadline = time.monotonic() + 2.0
    for process in running.values():
        process.join(max(0.0, deadline - time.monotonic()))
    for process in running.values():
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + 30.0
    for process in running.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()
