"""Driving the firmware test image's test main (templates/test_main.c.j2) from the host: requests written
to a file, the image run where that file is (QEMU with semihosting, or the same test main compiled for the
host), the answers read back.

A request is an operation, the model's index in the image (the memory report's order), the payload's
length (uint32) and the payload; every number little-endian, as the Cortex-M55 and the host store them.

| op  | payload                                               | answer                                      |
|-----|-------------------------------------------------------|---------------------------------------------|
| F   | int16 samples: one stream from a front-end reset      | per stride: row flag [, NUM_MFCC float32, ready flag [, int8 input]]; int64 window end |
| D   | (int64 window end, NUM_LABELS int8) per model run      | (int32 label, int64 time, int32 sum) per detection; int32 -1; due flag of frames 0..399 |
| P   | int32 format (888 or 565; 1888 or 1565: detail view), width, height, stride; frame | int32 status [, int8 input] |
| I   | rows of NUM_HEAD_OUTPUTS int8 (x2 with a detail view: whole, detail) | uint32 issues mask per row |

Each answer starts with the request's operation and model bytes.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError

REQUESTS, RESPONSES = "npubuild_requests.bin", "npubuild_responses.bin"
DUE_FRAMES = 400  # the detector's schedule is answered for frames 0 .. DUE_FRAMES - 1


def request(op: str, model: int, payload: bytes) -> bytes:
    return op.encode("ascii") + bytes([model]) + struct.pack("<I", len(payload)) + payload


def frontend_request(model: int, samples: np.ndarray) -> bytes:
    return request("F", model, np.asarray(samples, "<i2").tobytes())


def detector_request(model: int, window_ends: np.ndarray, outputs: np.ndarray) -> bytes:
    rows = b"".join(struct.pack("<q", int(e)) + np.asarray(o, np.int8).tobytes()
                    for e, o in zip(window_ends, outputs, strict=True))
    return request("D", model, rows)


def preprocess_request(model: int, frame: np.ndarray, fmt: int, width: int, height: int, stride: int,
                       detail: bool = False) -> bytes:
    """`frame`: uint8 rows of `stride` bytes (RGB888) or little-endian uint16 rows of `stride` pixels (RGB565);
    `detail`: the detail view instead of the whole view (a model whose blur heads read one)."""
    data = np.asarray(frame, np.uint8 if fmt == 888 else "<u2").tobytes()
    code = fmt + 1000 if detail else fmt
    return request("P", model, struct.pack("<4i", code, width, height, stride) + data)


def issues_request(model: int, outputs: np.ndarray) -> bytes:
    return request("I", model, np.asarray(outputs, np.int8).tobytes())


@dataclass
class Run:
    """One run of the test main: its exit code, console text, answers and wall time."""

    exit_code: int
    console: str
    responses: bytes
    seconds: float


def _run(command: list[str], requests: bytes, timeout: float) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / REQUESTS).write_bytes(requests)
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{command[0]}: the test image did not finish in {timeout:.0f} s") from None
        answers = Path(tmp) / RESPONSES
        return Run(proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace"),
                   answers.read_bytes() if answers.is_file() else b"", time.perf_counter() - start)


def qemu_command(elf: Path, machine: str) -> list[str]:
    """QEMU running the image on `machine` with semihosting (console on stdout, files in its folder)."""
    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        raise BuildError("qemu-system-arm not found (apt install qemu-system-arm)")
    return [qemu, "-M", machine, "-nographic", "-monitor", "none", "-serial", "null",
            "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]


def run_on_qemu(elf: Path, machine: str, requests: bytes = b"", timeout: float = 600.0) -> Run:
    """The image on QEMU's `machine`, answering `requests` (the timeout only stops a hung emulator)."""
    return _run(qemu_command(elf, machine), requests, timeout)


def run_program(program: Path, requests: bytes = b"", timeout: float = 600.0) -> Run:
    """The test main built for the host, answering `requests`."""
    return _run([str(program)], requests, timeout)


class Responses:
    """Reads the answers in request order; each reader checks the operation and model first."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"answers end at byte {len(self.data)}, {n} more expected at {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _head(self, op: str, model: int) -> None:
        got = self._take(2)
        if got != op.encode("ascii") + bytes([model]):
            raise ValueError(f"answer at byte {self.pos - 2} is {got!r}, expected {op!r} for model {model}")

    def frontend(self, model: int, strides: int, num_mfcc: int, input_size: int):
        """(float32 rows [n, num_mfcc], int8 inputs [m, input_size] after each row once ready, window end)."""
        self._head("F", model)
        rows, inputs = [], []
        for _ in range(strides):
            if not self._take(1)[0]:
                continue
            rows.append(np.frombuffer(self._take(4 * num_mfcc), "<f4"))
            if self._take(1)[0]:
                inputs.append(np.frombuffer(self._take(input_size), np.int8))
        end = struct.unpack("<q", self._take(8))[0]
        return (np.array(rows).reshape(-1, num_mfcc), np.array(inputs).reshape(-1, input_size), end)

    def detector(self, model: int):
        """([(label, time in samples, sum)], due flags of frames 0 .. DUE_FRAMES - 1)."""
        self._head("D", model)
        found = []
        while True:
            label = struct.unpack("<i", self._take(4))[0]
            if label < 0:
                break
            time_samples, total = struct.unpack("<qi", self._take(12))
            found.append((label, time_samples, total))
        return found, np.frombuffer(self._take(DUE_FRAMES), np.uint8).astype(bool)

    def preprocess(self, model: int, input_size: int):
        """(status, int8 input or None)."""
        self._head("P", model)
        status = struct.unpack("<i", self._take(4))[0]
        return status, (np.frombuffer(self._take(input_size), np.int8) if status == 0 else None)

    def issues(self, model: int, rows: int) -> np.ndarray:
        self._head("I", model)
        return np.frombuffer(self._take(4 * rows), "<u4")

    def done(self) -> bool:
        return self.pos == len(self.data)
