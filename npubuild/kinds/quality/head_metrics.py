"""Per-head evaluation of the image-quality model: FP32 (Keras) vs INT8 (LiteRT's reference kernels).

Each head gets its own decision threshold, chosen on the validation split (the
F1-best one; among equals, the one nearest 0.5), separately for FP32 and INT8
scores. On the test split: precision, recall, F1, ROC AUC and accuracy per head,
and macro-F1 over the heads (the model's "accuracy" in reports).

The INT8 threshold is also given in the output's int8 domain (`threshold_q`):
firmware fires a head when its raw int8 output q >= threshold_q, which decides
exactly as `score(q) >= threshold` does, with score(q) = scale * (q - zero_point)
computed in float32 as the predictor computes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.int8_runner import dequantize
from npubuild.stages import write_json
from npubuild.terminal import say


def threshold_q(threshold: float, scale: float, zero_point: int) -> int:
    """Smallest int8 q with dequantize(q) >= threshold; 128 (never) if there is none."""
    q = np.arange(-128, 128)
    hits = q[dequantize(q, scale, zero_point) >= np.float32(threshold)]
    return int(hits[0]) if len(hits) else 128


def run_int8_heads(tflite: Path, x: np.ndarray) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """Raw int8 outputs [N, heads] in head order, and each head's (scale, zero point), from the
    reference kernels (`int8_runner`): the bits firmware sees, so thresholds are chosen on them."""
    from npubuild.int8_runner import run_float
    from npubuild.tflite_file import io_tensors, output_order

    outputs = run_float(tflite, x)
    order = output_order(tflite)
    infos = io_tensors(tflite)[1]
    raw = np.stack([outputs[pos].reshape(len(x)) for pos in order], axis=1).astype(np.int8)
    return raw, [(infos[pos].scale, infos[pos].zero_point) for pos in order]


def int8_head_scores(tflite: Path, x: np.ndarray) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """`run_int8_heads`, dequantized: float32 scores [N, heads] as the predictor computes them, and each
    head's (scale, zero point)."""
    raw, quant = run_int8_heads(tflite, x)
    return np.stack([dequantize(raw[:, i], *q) for i, q in enumerate(quant)], axis=1), quant


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (rank statistic, ties averaged); None with one class only."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    pred = score >= np.float32(threshold)
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = roc_auc(y, score)
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
            "roc_auc": None if auc is None else round(auc, 6),
            "accuracy": round(float(np.mean(pred == (y == 1))), 6), "positives": int(y.sum()),
            "threshold": float(threshold)}


def choose_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The F1-best threshold on these scores (decision: score >= threshold); ties: nearest 0.5."""
    candidates = np.unique(np.concatenate([score, [np.float32(0.5)]])).astype(np.float32)
    best, best_key = np.float32(0.5), (-1.0, 0.0)
    for t in candidates:
        f1 = binary_metrics(y, score, float(t))["f1"]
        key = (f1, -abs(float(t) - 0.5))
        if key > best_key:
            best, best_key = t, key
    return float(best)


def score_set(heads, y, scores, thresholds) -> dict:
    per_head = {h: binary_metrics(y[:, i].astype(np.int64), scores[:, i], thresholds[h])
                for i, h in enumerate(heads)}
    macro = round(float(np.mean([m["f1"] for m in per_head.values()])), 6)
    return {"accuracy": macro, "macro_f1": macro, "per_head": per_head,
            "per_class": {h: m["f1"] for h, m in per_head.items()}, "confusion": []}


def fp32_scores(model, x: np.ndarray) -> np.ndarray:
    from npubuild.tfenv import array_batches

    out = model.predict(array_batches(x, 64), verbose=0)
    return np.concatenate([np.asarray(o).reshape(len(x), 1) for o in (out if isinstance(out, list) else [out])],
                          axis=1).astype(np.float32)


def evaluate_heads(recipe: Recipe, model, tflite: Path, val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], out: Path) -> None:
    """`model` is the Keras model the INT8 file came from (for QAT recipes: fake-quantized); `val` and
    `test`: (inputs, 0/1 labels per head) of the two splits."""
    heads = list(recipe.heads)
    (x_val, y_val), (x_test, y_test) = val, test
    fp32_val, fp32_test = fp32_scores(model, x_val), fp32_scores(model, x_test)
    int8_val, quant = int8_head_scores(tflite, x_val)
    int8_test, _ = int8_head_scores(tflite, x_test)
    thresholds = {
        "fp32": {h: choose_threshold(y_val[:, i], fp32_val[:, i]) for i, h in enumerate(heads)},
        "int8": {h: choose_threshold(y_val[:, i], int8_val[:, i]) for i, h in enumerate(heads)},
    }
    result = {
        "labels": heads, "heads": heads, "test_images": int(len(y_test)), "val_images": int(len(y_val)),
        "fp32": score_set(heads, y_test, fp32_test, thresholds["fp32"]),
        "int8": score_set(heads, y_test, int8_test, thresholds["int8"]),
        "thresholds": thresholds,
        "output_quantization": {h: {"scale": quant[i][0], "zero_point": quant[i][1]} for i, h in enumerate(heads)},
        "threshold_q": {h: threshold_q(thresholds["int8"][h], *quant[i]) for i, h in enumerate(heads)},
    }
    write_json(out, result)
    per_head = ", ".join(f"{h} {result['int8']['per_head'][h]['f1']:.3f}" for h in heads)
    say(f"  test macro-F1: FP32 {result['fp32']['macro_f1']:.4f}, INT8 {result['int8']['macro_f1']:.4f} "
          f"({len(y_test)} images; INT8 F1 {per_head})")


# --------------------------------------------------------------------------- per severity band

# Bands of the physical parameters (`data.PARAMS`), inclusive: exposure and noise (name, low, high); blur
# (name, kind, low, high), kind "clean" meaning any kind at most `high` pixels.
EV_BANDS = (("-4 .. -3 EV", -4.0, -3.0), ("-3 .. -2 EV", -3.0, -2.0), ("-2 .. -1.5 EV", -2.0, -1.5),
            ("-0.5 .. +0.3 EV (clean)", -0.5, 0.3), ("+0.7 .. +1.2 EV", 0.7, 1.2), ("+1.2 .. +1.8 EV", 1.2, 1.8),
            ("+1.8 .. +2.5 EV", 1.8, 2.5))
BLUR_BANDS = (("no blur / under 1 px", "clean", 0.0, 1.0), ("shake 4 .. 8 px", "shake", 4.0, 8.0),
              ("shake 8 .. 12 px", "shake", 8.0, 12.0), ("shake 12 .. 16 px", "shake", 12.0, 16.0),
              ("shake 16 .. 24 px", "shake", 16.0, 24.0), ("defocus 1.8 .. 3 px", "defocus", 1.8, 3.0),
              ("defocus 3 .. 5 px", "defocus", 3.0, 5.0), ("defocus 5 .. 8 px", "defocus", 5.0, 8.0))
NOISE_BANDS = (("noise floor (clean)", 0.0, 0.0125), ("0.035 .. 0.06", 0.035, 0.06), ("0.06 .. 0.09", 0.06, 0.09),
               ("0.09 .. 0.12", 0.09, 0.12))


def band_rows(heads: list[str], flagged: np.ndarray, params: np.ndarray) -> dict[str, list[dict]]:
    """Per band of exposure, blur and noise: how many images, and the share each related head
    flagged (INT8 decisions `flagged` [N, heads] against the drawn parameters `params` [N, PARAMS])."""
    from npubuild.kinds.quality.data import BLUR_KINDS, PARAMS

    ev, blur_px, kind, noise = (params[:, PARAMS.index(n)] for n in ("ev", "blur_px", "blur_kind", "noise"))

    def row(name: str, mask: np.ndarray, related: tuple[str, ...]) -> dict:
        shares = {h: (round(float(flagged[mask, heads.index(h)].mean()), 4) if mask.any() else None)
                  for h in related if h in heads}
        return {"band": name, "count": int(mask.sum()), "flagged": shares}

    tol = 1e-6
    out = {"exposure": [row(n, (ev >= lo - tol) & (ev <= hi + tol), ("too_dark", "too_bright"))
                        for n, lo, hi in EV_BANDS]}
    blur_rows = []
    for n, k, lo, hi in BLUR_BANDS:
        if k == "clean":
            mask = blur_px <= hi + tol
        else:
            mask = (kind == BLUR_KINDS.index(k)) & (blur_px >= lo - tol) & (blur_px <= hi + tol)
        blur_rows.append(row(n, mask, ("blurry",)))
    out["blur"] = blur_rows
    out["noise"] = [row(n, (noise >= lo - tol) & (noise <= hi + tol), ("noisy",)) for n, lo, hi in NOISE_BANDS]
    return out


def bands_of_split(recipe: Recipe, tflite: Path, features: Path, split: str, evaluation: dict) -> dict | None:
    """`band_rows` of a built-in split at the build's INT8 thresholds; None without its parameters."""
    from npubuild.kinds.quality.data import load_images, to_model_input

    with np.load(features) as d:
        if f"p_{split}" not in d.files:
            return None
        params = d[f"p_{split}"]
    images, _ = load_images(features, split)
    heads = list(recipe.heads)
    scores, _ = int8_head_scores(tflite, to_model_input(images))
    flagged = np.stack([scores[:, i] >= np.float32(evaluation["thresholds"]["int8"][h])
                        for i, h in enumerate(heads)], axis=1)
    return band_rows(heads, flagged, params)
