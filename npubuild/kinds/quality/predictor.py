"""The image-quality predictor: the model behind a two-call API, thresholds hidden inside.

    predictor = ImageQualityPredictor.create("quality_int8.tflite", "quality_meta.json")
    predictor.predict(image)  # -> [("blurry", 0.91), ...]: the issues found, most certain first

It runs the INT8 TFLite file with LiteRT's reference kernels (`int8_runner`, the bits firmware
gets) and takes everything else from the
metadata the build writes beside the firmware header (`<model>_meta.json`):
the views (`views.py`: the whole photo, and a detail view for the blur head), the input quantization,
which output is which head, which view each head reads, and each head's threshold. The firmware header encodes the same contract as int8
thresholds; `raw` exposes the int8 outputs to compare the two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.int8_runner import Int8Runner, dequantize
from npubuild.kinds.quality.data import to_model_input
from npubuild.kinds.quality.views import VIEWS, per_head, photo_views


@dataclass(frozen=True)
class QualityIssue:
    name: str
    output_index: int
    scale: float
    zero_point: int
    threshold: float
    threshold_q: int
    view: str = "whole"


class ImageQualityPredictor:
    def __init__(self, runner: Int8Runner, metadata: dict) -> None:
        self._runner = runner
        self.issues = [QualityIssue(h["name"], h["output_index"], h["scale"], h["zero_point"], h["threshold"],
                                    h["threshold_q"], h.get("view", "whole")) for h in metadata["heads"]]
        self.height, self.width = metadata["input"]["height"], metadata["input"]["width"]
        self.detail_side = metadata["input"].get("detail_side", 0)

    @classmethod
    def create(cls, tflite: Path | str, metadata: Path | str) -> ImageQualityPredictor:
        tflite, metadata = Path(tflite), Path(metadata)
        try:
            meta = json.loads(metadata.read_text())
        except FileNotFoundError:
            raise BuildError(f"{metadata}: not found") from None
        except ValueError as e:
            raise BuildError(f"{metadata}: not valid JSON: {e}") from None
        if not tflite.is_file():
            raise BuildError(f"{tflite}: not found")
        predictor = cls(Int8Runner(tflite), meta)
        if len(predictor._runner.outputs) != len(predictor.issues):
            raise BuildError(f"{tflite}: has {len(predictor._runner.outputs)} outputs but {metadata} names "
                             f"{len(predictor.issues)} heads")
        return predictor

    def views(self, image: np.ndarray) -> np.ndarray:
        """The model inputs of an image of any size (uint8 or float RGB): uint8 [views, height, width, 3],
        the whole view, then the detail view when a head reads it."""
        need_detail = any(i.view == "detail" for i in self.issues)
        return photo_views(np.asarray(image), self.height, self.detail_side if need_detail else 0)

    def raw(self, image: np.ndarray) -> np.ndarray:
        """The int8 output of each head (head order) for an image of any size: each head's output on the
        view it reads (one inference per view)."""
        rows = []
        for pixels in self.views(image):
            outputs = self._runner.run(self._runner.quantize_input(to_model_input(pixels))[None])
            rows.append([outputs[i.output_index].reshape(-1)[0] for i in self.issues])
        return per_head(np.array([rows], np.int8), [VIEWS.index(i.view) for i in self.issues])[0]

    def scores(self, image: np.ndarray) -> dict[str, float]:
        raw = self.raw(image)
        return {i.name: float(dequantize(q, i.scale, i.zero_point)) for i, q in zip(self.issues, raw, strict=True)}

    def predict(self, image: np.ndarray) -> list[tuple[str, float]]:
        """The quality issues whose score reaches their threshold, most certain first."""
        raw = self.raw(image)
        found = []
        for issue, q in zip(self.issues, raw, strict=True):
            score = dequantize(q, issue.scale, issue.zero_point)
            if score >= np.float32(issue.threshold):
                found.append((issue.name, float(score)))
        return sorted(found, key=lambda item: -item[1])
