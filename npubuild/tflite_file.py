"""What a TFLite file says about itself, read from the flatbuffer: its input and output tensors (shape,
type, quantization) and which output is which Keras output. Works on Vela-compiled files too, which
LiteRT cannot load (no host kernel for the Ethos-U operator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


# TFLite TensorType codes (schema.fbs)
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8", 10: "float64"}


def io_tensors(tflite_path: Path) -> tuple[TensorInfo, list[TensorInfo]]:
    """Input tensor and output tensors (in the file's output order), read from the flatbuffer itself:
    works for Vela-compiled files too, which LiteRT cannot load (no host kernel for the Ethos-U operator)."""
    from ethosu.vela.tflite.Model import Model

    graph = Model.GetRootAsModel(tflite_path.read_bytes(), 0).Subgraphs(0)

    def info(index: int) -> TensorInfo:
        t = graph.Tensors(index)
        q = t.Quantization()
        scale = float(np.float32(q.Scale(0))) if q is not None and q.ScaleLength() else 0.0
        zero = int(q.ZeroPoint(0)) if q is not None and q.ZeroPointLength() else 0
        return TensorInfo(tuple(int(t.Shape(i)) for i in range(t.ShapeLength())),
                          TENSOR_TYPES.get(t.Type(), "other"), scale, zero)

    return info(graph.Inputs(0)), [info(graph.Outputs(i)) for i in range(graph.OutputsLength())]


def output_order(tflite: Path | bytes) -> list[int]:
    """For each Keras output in order (each head), its position among the TFLite file's outputs
    (what TFLM's `interpreter.output(i)` takes): the converter may reorder them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = (Interpreter(model_content=tflite) if isinstance(tflite, bytes)
                   else Interpreter(model_path=str(tflite)))
    positions = {d["index"]: i for i, d in enumerate(interpreter.get_output_details())}
    outputs = interpreter._get_full_signature_list()["serving_default"]["outputs"]  # output_<k> -> tensor index
    return [positions[outputs[f"output_{k}"]] for k in range(len(outputs))]
