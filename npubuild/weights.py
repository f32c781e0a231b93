"""What the INT8 TFLite file really holds: per-layer sparsity and distinct weight values.

Read from the flatbuffer through LiteRT (constant tensors of the weighted
operators), so optimization claims are checked in the bytes that ship, not in
the Keras model they came from.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Operator -> axis of the output channel in its weight tensor (TFLite layouts:
# CONV_2D [out, h, w, in], DEPTHWISE_CONV_2D [1, h, w, out], FULLY_CONNECTED [out, in]).
WEIGHTED_OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
# Layers tfmot 0.8.1 prunes and clusters (its registries list no DepthwiseConv2D weights).
PRUNABLE_OPS = ("CONV_2D", "FULLY_CONNECTED")
# "<model>/<layer>/..." segments of a (possibly fused, ';'-joined) tensor name; QAT prefixes "quant_".
_LAYER_SEGMENT = re.compile(r"(?:^|;)[^/;]+/(?:quant_)?([^/;]+)/")
_FUSED_LAYERS = ("batch_normalization", "re_lu", "activation")


@dataclass(frozen=True)
class LayerWeights:
    """Measured figures of one weight tensor in the INT8 file."""

    layer: str  # Keras layer name where the tensor name reveals it, else "<op> #<n>"
    op: str
    shape: tuple[int, ...]
    parameters: int
    sparsity: float  # fraction of weights that are exactly zero
    distinct_per_tensor: int
    max_distinct_per_channel: int
    max_distinct_nonzero_per_channel: int

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def _layer_name(op: str, n: int, tensor_name: str) -> str:
    """The Keras layer a weight tensor came from; fused names may list a BatchNormalization first."""
    for layer in _LAYER_SEGMENT.findall(tensor_name):
        if not layer.startswith(_FUSED_LAYERS):
            return layer
    return f"{op} #{n}"


def measure_weights(tflite_path: Path) -> list[LayerWeights]:
    from ai_edge_litert.interpreter import Interpreter

    # The weights are read from the file, the model is never run: no tensors are allocated, so no
    # delegate is made either (XNNPACK's would announce itself on the terminal).
    interpreter = Interpreter(model_path=str(tflite_path))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    layers = []
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        kind = op["op_name"]
        if kind not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        w = np.array(interpreter.get_tensor(index))
        counts[kind] = counts.get(kind, 0) + 1
        channels = np.moveaxis(w, WEIGHTED_OPS[kind], 0).reshape(w.shape[WEIGHTED_OPS[kind]], -1)
        per_channel = [np.unique(c) for c in channels]
        layers.append(LayerWeights(
            layer=_layer_name(kind, counts[kind], details[index]["name"]),
            op=kind, shape=tuple(int(d) for d in w.shape), parameters=int(w.size),
            sparsity=round(float(np.mean(w == 0)), 6),
            distinct_per_tensor=int(len(np.unique(w))),
            max_distinct_per_channel=max(len(u) for u in per_channel),
            max_distinct_nonzero_per_channel=max(int(np.count_nonzero(u)) for u in per_channel),
        ))
    return layers


def overall_sparsity(layers: list[LayerWeights], ops: tuple[str, ...] = PRUNABLE_OPS) -> float:
    chosen = [lw for lw in layers if lw.op in ops]
    total = sum(lw.parameters for lw in chosen)
    return round(sum(lw.sparsity * lw.parameters for lw in chosen) / total, 6) if total else 0.0
