"""Terminal output of a build: messages of running stages (`say`), progress bars of long loops
(`Progress`) and of Keras epochs (`epoch_logger`), drawn on a terminal and written as plain lines
elsewhere (CI logs, pipes)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

_STAGE_LOG: ContextVar[Callable[[str], None]] = ContextVar("stage_log", default=print)


def say(message: str) -> None:
    """What a running stage tells the user: through the build's logger (the `log` of its Cache), so
    a build's captured log holds it too."""
    _STAGE_LOG.get()(message)


@contextlib.contextmanager
def say_through(log: Callable[[str], None]) -> Iterator[None]:
    """`say` sends its messages to `log` within the block (a Cache does it around a stage's action)."""
    token = _STAGE_LOG.set(log)
    try:
        yield
    finally:
        _STAGE_LOG.reset(token)


# Where a model built in a process of its own sends its bars: to the build's process, which draws them
# (`workers.run_side_by_side`).
_BAR_FACTORY: Callable[[int, str], Any] | None = None


def set_bar_factory(factory: Callable[[int, str], Any] | None) -> None:
    """Progress bars of this process are objects `factory(total, what)` (update(n), close()) from now on."""
    global _BAR_FACTORY
    _BAR_FACTORY = factory


def on_terminal() -> bool:
    """True when progress bars can be drawn: standard error is a terminal (not CI's log, not a pipe)
    and NPUBUILD_PLAIN is not set, or the bars are drawn by the build's process."""
    import sys

    return _BAR_FACTORY is not None or (sys.stderr.isatty() and not os.environ.get("NPUBUILD_PLAIN"))


def _bar(total: int, what: str):
    """A tqdm bar on standard error that vanishes when done (the final line goes through `say`)."""
    if _BAR_FACTORY is not None:
        return _BAR_FACTORY(total, what)
    from tqdm import tqdm

    return tqdm(total=total, desc=f"  {what}", leave=False, dynamic_ncols=True, unit_scale=True)


class Progress:
    """Progress of a long loop: on a terminal a tqdm bar (count, rate, time left); elsewhere one line
    through `say` at most every `every_s` seconds (readable in CI logs). Always one line at the end."""

    def __init__(self, total: int, what: str, every_s: float = 5.0) -> None:
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self._start = self._last = time.perf_counter()
        self._bar = _bar(total, what) if on_terminal() else None

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(n)
            if self.done < self.total:
                return
            self._bar.close()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            left = (now - self._start) / self.done * (self.total - self.done) if self.done else 0.0
            say(f"  {self.what}: {self.done:,}/{self.total:,}"
                + (f", about {left:.0f} s left" if self.done < self.total else f" in {now - self._start:.0f} s"))


def epoch_logger(keras, epochs: int, what: str):
    """A Keras callback that reports each epoch through `say` (loss, metrics, seconds)."""

    class EpochLog(keras.callbacks.Callback):
        _bar = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            steps = (self.params or {}).get("steps")
            if on_terminal() and steps:  # steps of this epoch, with rate and time left
                self._bar = _bar(int(steps), f"{what} epoch {epoch + 1}/{epochs}")

        def on_train_batch_end(self, batch, logs=None):
            if self._bar is not None:
                self._bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if not k.startswith("lr"))
            say(f"  {what} epoch {epoch + 1}/{epochs}: {figures} ({time.perf_counter() - self._start:.0f} s)")

    return EpochLog()
