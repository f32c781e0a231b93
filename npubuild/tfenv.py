"""Import TensorFlow the one way this project uses it: Keras 2 (`tf_keras`), deterministic ops, and
TensorFlow's own messages kept off the terminal.

tfmot 0.8.1 works only with Keras 2, so TF_USE_LEGACY_KERAS must be set before
TensorFlow is first imported. Imported lazily by the stages that need it, so a
build with nothing to do never loads TensorFlow.

TensorFlow talks on every start: its libraries log while they load, before its log level is read
("Could not find cuda drivers on your machine", "oneDNN custom operations are on"), and on a
machine without a GPU it logs "failed call to cuInit" as an error. None of it is about the build,
so the terminal shows the build's own lines only: TensorFlow's log level (TF_CPP_MIN_LOG_LEVEL)
defaults to 3 here, and what its libraries print while they load, or the converter prints while
it works, is held back and filtered by that level (`native_messages`). Errors that stop a stage
still reach the user, as Python exceptions. `TF_CPP_MIN_LOG_LEVEL=0 invoke build` shows
everything TensorFlow says.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

# TensorFlow's log threshold unless the user sets TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO,
# 2 no WARNING, 3 no ERROR either.
DEFAULT_LOG_LEVEL = 3
# absl's log line ("I0000 00:00:1796307156.962178    8269 port.cc:153] ...") and its severity.
_ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def log_level() -> int:
    """TensorFlow's log threshold, TF_CPP_MIN_LOG_LEVEL (set to DEFAULT_LOG_LEVEL when not given)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(DEFAULT_LOG_LEVEL))
    try:
        return int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        return DEFAULT_LOG_LEVEL


def below_level(line: str, level: int, info_lines: tuple[str, ...] = ()) -> bool:
    """Is `line` one of TensorFlow's messages under the threshold `level`: an absl log line of a lower
    severity, absl's banner (a warning), or a line starting with one of `info_lines` (chatter
    printed without a severity, counted as information)?"""
    absl = _ABSL_LINE.match(line)
    if absl:
        return _SEVERITY[absl.group(1)] < level
    if line.rstrip("\n") == _ABSL_BANNER:
        return level > _SEVERITY["W"]
    return level > _SEVERITY["I"] and line.startswith(info_lines)


@contextlib.contextmanager
def native_messages(level: int, info_lines: tuple[str, ...] = ()) -> Iterator[None]:
    """Within the block, what is written to standard error (file descriptor 2, where native code
    writes) is held back; after it, written out without the lines `below_level(line, level,
    info_lines)`, the rest as it came."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not below_level(line, level, info_lines))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tf(seed: int | None = None):
    """Return (tf, keras) with Keras 2 selected and, given a seed, everything seeded."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    level = log_level()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU build machine: skip the GPU probe
    if "tensorflow" not in sys.modules:
        with native_messages(level):
            import tensorflow
            import tf_keras  # noqa: F401
        _quiet_python_messages(tensorflow, level)
    import tensorflow as tf
    import tf_keras as keras

    _without_thread_spinning()
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return tf, keras


def _quiet_python_messages(tf, level: int) -> None:
    """TensorFlow's Python-side messages under the same threshold: its logger's warnings (level 2 and
    up), and Keras's advice against the HDF5 files the stages write on purpose (level 1 and up)."""
    import logging
    import warnings

    if level >= 2:
        tf.get_logger().setLevel(logging.ERROR)
    if level >= 1:
        warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file", category=UserWarning)


def _without_thread_spinning() -> None:
    """TensorFlow's thread pools without spinning: an idle worker sleeps at once instead of spinning
    on the core first. Alone, a model trains as fast either way; beside another model's process
    (models build side by side), the spinning threads of one take the cores from the other. How a
    thread waits changes no arithmetic: the weights are the same bit for bit. Set before TensorFlow
    starts its pools (its first op); a process where TensorFlow already runs keeps the pools it has."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    if ctx._context_handle is not None:
        return
    config = config_pb2.ConfigProto()
    if ctx._config is not None:
        config.CopyFrom(ctx._config)
    config.experimental.disable_thread_spinning = True
    ctx._config = config


def no_autotune(dataset):
    """`dataset` with tf.data's autotuning off. Autotuning keeps a thread that re-plans the pipeline at
    growing intervals (up to a minute), and an iterator's destructor waits for that thread to wake:
    Keras's `fit` and `predict` can sit up to a minute after their last batch deleting their iterator.
    The project's pipelines are fixed (arrays in memory, a prefetch of two batches): nothing is left
    to tune."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def array_batches(arrays, batch_size: int):
    """Arrays in memory (a tuple nests: inputs, then targets) as batches in order, without autotuning
    (`no_autotune`): what Keras makes of numpy arrays, less the wait when it is deleted."""
    import tensorflow as tf

    def nested(value):  # a list would be stacked into one tensor; a tuple is a structure (one target per head)
        return tuple(nested(v) for v in value) if isinstance(value, (list, tuple)) else value

    return no_autotune(tf.data.Dataset.from_tensor_slices(nested(arrays)).batch(batch_size))
