"""TensorFlow's own messages stay off the terminal: the filter by its log level, and a fresh process
that imports TensorFlow and runs an op says nothing unless TF_CPP_MIN_LOG_LEVEL asks for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from npubuild.convert import CONVERTER_CHATTER
from npubuild.tfenv import below_level, native_messages

from .conftest import code_env

CUDA_INFO = "I0000 00:00:1796307156.980463    8269 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
CUINIT = "E0000 00:00:1796307176.389362    8269 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
WARNING = "W1203 14:02:11.123456    8269 tf_tfl_flatbuffer_helpers.cc:365] Ignored output_format.\n"
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"


@pytest.mark.parametrize(("line", "dropped_from_level"), [
    (CUDA_INFO, 1), (WARNING, 2), (CUINIT, 3), (BANNER, 2),
    ("fully_quantize: 0, inference_type: 6, input_inference_type: INT8\n", 1),
    ("Traceback (most recent call last):\n", None), ("  training epoch 1/1: accuracy 0.0781\n", None),
])
def test_tensorflow_lines_are_dropped_below_the_log_level_and_nothing_else(line, dropped_from_level):
    for level in range(4):
        expected = dropped_from_level is not None and level >= dropped_from_level
        assert below_level(line, level, CONVERTER_CHATTER) == expected, level


def test_native_messages_holds_standard_error_back_and_writes_the_rest(capfd):
    with native_messages(3):
        os.write(2, (BANNER + CUDA_INFO + "a line of the build's own\n" + CUINIT + "and another\n").encode())
        os.write(1, b"stdout is not touched\n")
    out, err = capfd.readouterr()
    assert err == "a line of the build's own\nand another\n"
    assert out == "stdout is not touched\n"
    with native_messages(0):
        os.write(2, (CUDA_INFO + CUINIT).encode())
    assert capfd.readouterr().err == CUDA_INFO + CUINIT


@pytest.mark.slow
def test_a_process_importing_tensorflow_says_nothing_unless_asked():
    """The real TensorFlow: on a machine without a GPU it logs the CUDA probe while loading and
    "failed call to cuInit" at its first op; `TF_CPP_MIN_LOG_LEVEL=0` shows what it says."""
    code = ("from npubuild.tfenv import import_tf\n"
            "tf, keras = import_tf(seed=1)\n"
            "print(float(tf.constant(1.0) + 1))\n")
    env = {k: v for k, v in code_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "2.0\n", "")
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=600)
    assert loud.returncode == 0 and loud.stdout == "2.0\n"
    assert "I0000" in loud.stderr  # TensorFlow's own information lines, as it prints them
