"""The one way the project runs a quantized TFLite model on the host: LiteRT's reference kernels.

Every INT8 number the project reports or bakes into a header (accuracy, per-head thresholds,
golden vectors, streaming detections, the predictor's answers) comes from here, so it is the
number the device computes: TFLM's kernels are the reference kernels (tested bit for bit in
tests/test_firmware_files.py), and Arm's Ethos-U is designed to match them. LiteRT's default
kernels are faster but not the same bits: XNNPACK differs by one quantization step on a share
of outputs, and so do the optimized builtin kernels without XNNPACK.

The reference kernels are slow (tens of times slower than XNNPACK), and run one sample at a time:
the models are converted with a fixed batch of 1. Long runs are therefore split over worker
processes (`processes`), each with its own interpreter; a sample's outputs do not depend on which
worker ran it. Workers also contain the reference
kernels' hard failures: some kernels abort the process on quantization parameters they do not
support (softmax with a very large input scale, seen on untrained models), which in a worker
becomes one error line instead of a dead build.

`run_tflm` runs a file on TFLM's interpreter instead, for the one case LiteRT cannot: a file it
refuses to load (`invoke deploy`'s golden vectors for TFLM's person-detection model).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError

# Below this many samples a worker process costs more (start-up, imports) than it saves.
MIN_SAMPLES_PER_PROCESS = 64


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """Float values -> the tensor's integer type, as firmware feeds the model: round to nearest
    (half to even), add the zero point, saturate."""
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x) / scale + zero_point), info.min, info.max).astype(dtype)


@dataclass(frozen=True)
class Tensor:
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


class Int8Runner:
    """A quantized TFLite model on LiteRT's reference kernels, in this process.

        runner = Int8Runner(path)
        outputs = runner.run(q)   # q: (N, ...) in the input's integer type -> one (N, ...) array per output
    """

    def __init__(self, tflite: Path | str) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(tflite)
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=1,
                                            experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BuildError(f"{self.path}: LiteRT cannot run it: {_first_line(e)}") from None

        def tensor(d: dict) -> Tensor:
            scale, zero = d["quantization"]
            return Tensor(d["index"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name, float(scale),
                          int(zero))

        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise BuildError(f"{self.path}: has {len(inputs)} inputs; one is supported")
        self.input = tensor(inputs[0])
        self.outputs = [tensor(d) for d in self._interpreter.get_output_details()]

    def run(self, q: np.ndarray) -> list[np.ndarray]:
        """Outputs (in the file's output order) for integer inputs `q` (N, ...), one sample at a time."""
        q = np.asarray(q)
        shape = self.input.shape
        results = [np.empty((len(q), *o.shape[1:]), o.dtype) for o in self.outputs]
        for n, row in enumerate(q):
            self._interpreter.set_tensor(self.input.index, row.astype(self.input.dtype).reshape(shape))
            self._interpreter.invoke()
            for result, out in zip(results, self.outputs, strict=True):
                result[n] = self._interpreter.get_tensor(out.index).reshape(out.shape[1:])
        return results

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        return quantize(x, self.input.scale, self.input.zero_point, self.input.dtype)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # LiteRT joins its reports without a space: "... Was 3.Tensor 5 has invalid ..."
    return re.sub(r"\.(?=[A-Z])", ". ", text[0]) if text else type(e).__name__


_WORKER_RUNNERS: dict[tuple[str, int, int], Int8Runner] = {}  # in a worker: one runner per model file


def _run_chunk(path: str, q: np.ndarray) -> list[np.ndarray]:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS.clear()
        _WORKER_RUNNERS[key] = Int8Runner(path)
    return _WORKER_RUNNERS[key].run(q)


_POOLS: dict[int, object] = {}  # processes -> a ProcessPoolExecutor kept for this process's life


def _pool(processes: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from npubuild.workers import ignore_ctrl_c

    if processes not in _POOLS:
        if not _POOLS:
            import atexit

            atexit.register(shutdown_workers)  # before the interpreter tears down what the pool's thread uses
        # spawn: the build process may hold TensorFlow's threads, which fork would copy half-alive.
        _POOLS[processes] = ProcessPoolExecutor(max_workers=processes, initializer=ignore_ctrl_c,
                                                mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[processes]


def shutdown_workers() -> None:
    """Stop the worker processes `run_quantized` keeps (they also end with this process)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_quantized(tflite: Path | str, q: np.ndarray, processes: int | None = None) -> list[np.ndarray]:
    """Integer outputs, one array per output tensor in the file's order, for integer inputs `q` (N, ...)
    in the input tensor's type: `Int8Runner(tflite).run(q)` in worker processes (default: one per CPU,
    kept for later calls; 0: in this process). The same bits however it is split."""
    from concurrent.futures.process import BrokenProcessPool

    q = np.asarray(q)
    processes = default_processes() if processes is None else processes
    if processes == 0:
        return Int8Runner(tflite).run(q)
    chunks = np.array_split(q, max(1, min(processes, len(q) // MIN_SAMPLES_PER_PROCESS)))
    path = str(Path(tflite).resolve())
    try:
        parts = list(_pool(processes).map(_run_chunk, [path] * len(chunks), chunks))
    except BrokenProcessPool:
        _POOLS.pop(processes, None)
        raise BuildError(f"{tflite}: LiteRT's reference kernels stopped the process running it (an "
                         f"operator's quantization parameters are outside what the kernels support)") from None
    return _joined(parts)


def _joined(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each output's rows from every chunk, in chunk order."""
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _in_workers(run, tflite: Path | str, chunks: list[np.ndarray], broken: str) -> list[np.ndarray]:
    """`run(path, chunk)` for each chunk, one worker process each; outputs joined in chunk order.
    A worker that dies (a kernel's abort) becomes `BuildError("<tflite>: <broken>")`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from npubuild.workers import ignore_ctrl_c

    # spawn: the build process may hold TensorFlow's threads, which fork would copy half-alive.
    try:
        with ProcessPoolExecutor(max_workers=len(chunks), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=ignore_ctrl_c) as pool:
            parts = list(pool.map(run, [str(tflite)] * len(chunks), chunks))
    except BrokenProcessPool:
        raise BuildError(f"{tflite}: {broken}") from None
    return _joined(parts)


def _run_tflm_chunk(path: str, q: np.ndarray) -> list[np.ndarray]:
    from tflite_micro import runtime

    from npubuild.tflite_file import io_tensors

    inp, outs = io_tensors(Path(path))
    results = [np.empty((len(q), *o.shape[1:]), o.dtype) for o in outs]
    # TFLM reports why it fails on stderr (C++), then raises a generic error: keep the reason for the one line.
    log = tempfile.TemporaryFile("w+")
    os.dup2(log.fileno(), 2)
    try:
        interpreter = runtime.Interpreter.from_file(path, arena_size=_tflm_arena_bytes(Path(path)))
        for n, row in enumerate(q):
            interpreter.set_input(row.astype(inp.dtype).reshape(inp.shape), 0)
            interpreter.invoke()
            for i, (result, out) in enumerate(zip(results, outs, strict=True)):
                result[n] = interpreter.get_output(i).reshape(out.shape[1:])
    except (ValueError, RuntimeError) as e:
        log.seek(0)
        said = [line.strip() for line in log if line.strip()]
        raise BuildError(f"{path}: TFLM cannot run it: {said[0] if said else _first_line(e)}") from None
    return results


def _tflm_arena_bytes(tflite: Path) -> int:
    """An arena TFLM cannot run short of: every tensor of the file at once, unshared (TFLM's own
    default, 10 times the file's size, is too small for a small model with large feature maps)."""
    from ethosu.vela.tflite.Model import Model

    model = Model.GetRootAsModel(tflite.read_bytes(), 0)
    total = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            total += 8 * int(np.prod([tensor.Shape(d) for d in range(tensor.ShapeLength())]))  # 8: the widest type
    return 10 * tflite.stat().st_size + total + 65536


def run_tflm(tflite: Path | str, q: np.ndarray) -> list[np.ndarray]:
    """`run_quantized`'s outputs from TFLM's interpreter (tflite_micro) instead, in one worker process: for a
    file LiteRT refuses to load. LiteRT checks every tensor's quantization when it loads a file, TFLM
    only what its kernels use: TFLM's own person-detection model has 1-D depthwise biases with
    `quantized_dimension` 3, which LiteRT rejects. The kernels are the same reference kernels."""
    return _in_workers(_run_tflm_chunk, tflite, [np.asarray(q)], "TFLM stopped the process running it")


def run_float(tflite: Path | str, x: np.ndarray, processes: int | None = None) -> list[np.ndarray]:
    """Float inputs quantized with the input tensor's parameters, then `run_quantized`."""
    from npubuild.tflite_file import io_tensors

    inp = io_tensors(Path(tflite))[0]
    return run_quantized(tflite, quantize(x, inp.scale, inp.zero_point, inp.dtype if inp.dtype in ("int8", "int16")
                                     else "int8"), processes)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The one score formula: float32(scale) * (q - zero_point), in float32."""
    return np.float32(scale) * (np.asarray(q).astype(np.float32) - np.float32(zero_point))
