"""FP32 (Keras) vs INT8 (LiteRT reference kernels: `int8_runner`) accuracy on the held-out test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.stages import write_json
from npubuild.terminal import say


def int8_scores(tflite_path: Path, x: np.ndarray) -> np.ndarray:
    """The INT8 model's scores for float inputs: inputs quantized, the first output dequantised and
    flattened per sample (N, values), with the reference kernels (int8_runner)."""
    from npubuild.int8_runner import dequantize, run_float
    from npubuild.tflite_file import io_tensors

    out = run_float(tflite_path, x)[0]
    info = io_tensors(tflite_path)[1][0]
    return dequantize(out, info.scale, info.zero_point).reshape(len(x), -1)


def classification_metrics(labels: list[str], y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    n = len(labels)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, label in enumerate(labels):
        total = int(confusion[i].sum())
        per_class[label] = round(float(confusion[i, i] / total), 6) if total else None
    return {
        "accuracy": round(float(np.mean(y_true == y_pred)), 6) if len(y_true) else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_classifier(labels: list[str], model, tflite_path: Path, x_test: np.ndarray, y_test: np.ndarray,
                        out: Path) -> None:
    """`model` is the Keras model the INT8 file came from (for QAT recipes: fake-quantized)."""
    from npubuild.tfenv import array_batches

    fp32 = model.predict(array_batches(x_test, 256), verbose=0).argmax(axis=1)
    int8 = int8_scores(tflite_path, x_test).argmax(axis=1)
    result = {
        "labels": list(labels),
        "test_clips": int(len(y_test)),
        "fp32": classification_metrics(labels, y_test, fp32),
        "int8": classification_metrics(labels, y_test, int8),
        "int8_fp32_agreement": round(float(np.mean(fp32 == int8)), 6) if len(y_test) else 0.0,
    }
    write_json(out, result)
    say(f"  test accuracy: FP32 {result['fp32']['accuracy']:.4f}, INT8 {result['int8']['accuracy']:.4f} "
        f"({len(y_test)} samples)")
