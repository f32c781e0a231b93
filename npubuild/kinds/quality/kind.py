"""Image quality as a model kind (DermAssist's shape): images (built-in degraded photos and textures, or
a folder with labels.csv), one sigmoid output per head, per-head thresholds chosen on validation and
exported in the int8 output domain, and the predictor's metadata beside the header."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.kinds.base import DataPlan, ModelKind

WIDTHS = (0.35, 0.5)  # width multipliers `invoke fit` tries beside the recipe's


class ImageQuality(ModelKind):
    name = "image_quality"
    label_field = "heads"
    tables = ("image",)
    profile_sizes = ("train_images", "val_images", "test_images")
    architectures = ("mobilenet_v2_heads",)
    metric_note = "Accuracy is macro-F1 over the heads (each head's threshold chosen on the validation split)"
    folder_help = "images and a labels.csv (file, one 0/1 column per head)"
    takes_base_images = True

    def data_plan(self, recipe, profile, data_dir, out, log) -> DataPlan:
        from npubuild.kinds.base import BaseImagesDir
        from npubuild.kinds.quality import data
        from npubuild.stages import folder_fingerprint

        im = recipe.image
        params = {"recipe": recipe.name, "heads": recipe.heads, "size": [im.height, im.width], "seed": recipe.seed}
        if im.detail_side:
            params["detail_side"] = im.detail_side
        if data_dir is None or isinstance(data_dir, BaseImagesDir):
            counts = {"train": profile.train_images, "val": profile.val_images, "test": profile.test_images}
            params.update(counts=counts, source="builtin" if data_dir is None else "base_images")
            if data_dir is not None:
                params["fingerprint"] = folder_fingerprint(data_dir)
            return DataPlan(params, ("scikit-image", "scipy", "numpy", "pillow"),
                            lambda: data.build_builtin(recipe.heads, im.height, counts, recipe.seed, out, data_dir,
                                                       detail_side=im.detail_side),
                            ("kinds.quality.data",))
        params.update(source="labels_csv", fingerprint=data.fingerprint(data_dir))
        detail = im.detail_side if im.detail_heads else 0
        return DataPlan(params, ("pillow", "scikit-image", "numpy"),
                        lambda: data.build_from_dir(data_dir, recipe.heads, im.height, out, detail_side=detail),
                        ("kinds.quality.data",))

    def load_split(self, recipe, features, split):
        from npubuild.kinds.quality.data import load_images, to_model_input

        images, labels = load_images(features, split)
        return to_model_input(images), labels.astype(np.float32)

    def epoch_inputs(self, recipe, features, rows):
        """Every epoch, each training image in one of its eight flips and quarter turns, drawn afresh: no
        label changes with them (blur, exposure and noise have no direction the data prefers), and the
        model sees eight times as many pictures for the cost of a copy."""
        from npubuild.kinds.quality.data import load_images, to_model_input

        images, _ = load_images(features, "train")
        if rows is not None:
            images = images[rows]

        def draw(epoch, rng):
            turn = rng.integers(8, size=len(images))
            out = np.empty(images.shape, np.float32)
            for t in range(8):
                picked = turn == t
                view = images[picked][:, :, ::-1] if t >= 4 else images[picked]
                out[picked] = to_model_input(np.rot90(view, t % 4, axes=(1, 2)))
            return out

        return draw

    def representative(self, recipe, features, count, seed):
        """The training split's images, and a ramp covering every pixel value (the input range is the
        full 0..255, whatever the sample happens to hold)."""
        from npubuild.kinds.quality.data import full_range_image, to_model_input

        rows = super().representative(recipe, features, count, seed)
        ramp = to_model_input(full_range_image(recipe.image.height, recipe.image.width))
        return np.concatenate([ramp[None], rows])

    def build_model(self, recipe):
        from npubuild.kinds.quality.model import mobilenet_v2_heads

        im = recipe.image
        return mobilenet_v2_heads(im.height, im.width, im.alpha, recipe.heads)

    def search_space(self, recipe, technique):
        """`invoke fit` may narrow or widen the backbone: MobileNetV2's width multiplier."""
        return {"image.alpha": tuple(sorted({recipe.image.alpha, *WIDTHS}))}

    def compile_args(self, recipe, keras):
        n = len(recipe.heads)
        return {"loss": [keras.losses.BinaryCrossentropy()] * n,
                "metrics": [[keras.metrics.BinaryAccuracy(name="acc")] for _ in range(n)]}

    def fit_targets(self, recipe, y):
        """One 0/1 column per head, positionally: tfmot's wrappers rename the outputs."""
        return [y[:, i:i + 1] for i in range(y.shape[1])]

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, recipe, model, tflite, features, out):
        from npubuild.kinds.quality.head_metrics import evaluate_heads

        evaluate_heads(recipe, model, tflite, self.load_split(recipe, features, "val"),
                       self.load_split(recipe, features, "test"), out)

    def builtin_sets(self, recipe, features):
        with np.load(features) as d:
            sets = {"test": "test split (base images held out of training)"}
            if "y_test_cam" in d.files:
                sets["test_cam"] = ("camera-like test set (the same held-out bases through another camera: other "
                                    "tone curves, JPEG qualities and noise floor)")
        return sets

    def summarize(self, recipe, result, paths, technique):
        """The camera-like gap, and per severity band what each head flagged (INT8, the build's thresholds)."""
        import json

        from npubuild.kinds.quality.head_metrics import bands_of_split

        sets = result["sets"]
        if {"test", "test_cam"} <= set(sets):
            result["gap_macro_f1"] = round(sets["test"]["int8"]["macro_f1"] - sets["test_cam"]["int8"]["macro_f1"], 4)
        evaluation = json.loads(paths.evaluation(technique).read_text())
        bands = {s: bands_of_split(recipe, paths.int8(technique), paths.features, s, evaluation)
                 for s in sets if s in ("test", "test_cam")}
        bands = {s: b for s, b in bands.items() if b is not None}
        if bands:
            result["bands"] = bands

    def read_folder(self, recipe, data_dir, features):
        from npubuild.kinds.quality.folder import read_quality_folder

        return read_quality_folder(recipe, data_dir)

    def score(self, recipe, model, tflite, x, y, evaluation):
        """Per head, at the thresholds the build chose on its validation split. `x`: model inputs
        [N, H, W, 3], or [N, views, H, W, 3] for photos (`views.py`: each head scored on its view)."""
        from npubuild.kinds.quality.head_metrics import fp32_scores, int8_head_scores, score_set
        from npubuild.kinds.quality.views import head_views, per_head

        heads = list(recipe.heads)
        if x.ndim == 5:
            index = head_views(recipe)
            n, v = x.shape[:2]
            flat = x.reshape(n * v, *x.shape[2:])
            int8 = per_head(int8_head_scores(tflite, flat)[0].reshape(n, v, -1), index)
            fp32 = per_head(fp32_scores(model, flat).reshape(n, v, -1), index)
        else:
            int8, fp32 = int8_head_scores(tflite, x)[0], fp32_scores(model, x)
        scored = {"count": int(len(y)),
                  "fp32": score_set(heads, y, fp32, evaluation["thresholds"]["fp32"]),
                  "int8": score_set(heads, y, int8, evaluation["thresholds"]["int8"])}
        for i, h in enumerate(heads):  # 2x2 per head: rows true (ok, issue), columns predicted
            pred = int8[:, i] >= np.float32(evaluation["thresholds"]["int8"][h])
            m = np.zeros((2, 2), np.int64)
            np.add.at(m, (y[:, i].astype(np.int64), pred.astype(np.int64)), 1)
            scored["int8"]["per_head"][h]["confusion"] = m.tolist()
        return scored

    def render_scores(self, recipe, result):
        lines = []
        for n, s in result["sets"].items():
            lines += [f"## {n}: {s['count']} images, macro-F1 FP32 {s['fp32']['macro_f1']:.4f}, "
                      f"INT8 {s['int8']['macro_f1']:.4f}", "",
                      "| head | precision FP32 | recall FP32 | F1 FP32 | precision INT8 | recall INT8 | F1 INT8 |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for h in recipe.heads:
                a, b = s["fp32"]["per_head"][h], s["int8"]["per_head"][h]
                lines.append(f"| {h} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                             f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
            lines.append("")
        if "gap_macro_f1" in result:
            lines += [f"Gap, INT8 macro-F1 test - camera-like: {result['gap_macro_f1']:.4f}.", ""]
        for set_name, bands in result.get("bands", {}).items():
            lines += [f"## {set_name}: what each head flagged, per severity band (INT8)", ""]
            for what, rows in bands.items():
                related = list(rows[0]["flagged"]) if rows else []
                lines += [f"| {what} band | images | " + " | ".join(f"flagged {h}" for h in related) + " |",
                          "|---|---:|" + "---:|" * len(related)]
                for r in rows:
                    lines.append(f"| {r['band']} | {r['count']} | " + " | ".join(
                        "-" if r["flagged"][h] is None else f"{100 * r['flagged'][h]:.1f}%" for h in related) + " |")
                lines.append("")
        return lines

    def confusion_matrices(self, recipe, scored):
        return [(h, np.array(m["confusion"]), ["ok", h]) for h, m in scored["int8"]["per_head"].items()]

    # ------------------------------------------------------------------ assets

    def asset_inputs(self, recipe, paths, technique):
        return [paths.evaluation(technique)]

    def asset_suffixes(self, recipe):
        """The predictor's metadata, and the application C (`app_code`: preprocessing, head decisions)."""
        return ("_meta.json", "_preprocess.h", "_preprocess.c", "_app_sizes.json")

    def asset_extras(self, recipe, *, int8, features, paths, technique, outputs):
        import json

        from npubuild.c_text import canonical_text, float_literal, unique_c_identifiers

        meta = quality_metadata(recipe, int8, json.loads(paths.evaluation(technique).read_text()))
        head_macros = unique_c_identifiers([h["name"] for h in meta["heads"]])
        context = {"quality": {**meta, "head_macros": [m.upper() for m in head_macros],
                               "threshold_literals": [float_literal(h["threshold"]) for h in meta["heads"]],
                               "scale_literals": [float_literal(h["scale"]) for h in meta["heads"]]}}
        return context, {"_meta.json": canonical_text(meta)}


def quality_metadata(recipe, int8: Path, evaluation: dict) -> dict:
    """What the predictor and the firmware header both use: input policy, heads, thresholds."""
    from npubuild.tflite_file import io_tensors, output_order

    input_info, outputs = io_tensors(int8)
    order = output_order(int8)
    from npubuild.kinds.quality.views import VIEWS, head_views, views_used

    views = views_used(recipe)
    heads = []
    for i, (head, view) in enumerate(zip(recipe.heads, head_views(recipe), strict=True)):
        out = outputs[order[i]]
        heads.append({"name": head, "output_index": order[i], "scale": out.scale, "zero_point": out.zero_point,
                      "threshold": evaluation["thresholds"]["int8"][head],
                      "threshold_q": evaluation["threshold_q"][head], "view": VIEWS[view]})
    exact = input_info.scale == 1.0 / 128.0 and input_info.zero_point == 0
    resize = "centre square crop, then resize to height x width (Gaussian anti-aliasing when shrinking)"
    if len(views) > 1:
        resize = (f"whole view: {resize}; detail view (heads {', '.join(recipe.image.detail_heads)}): centre square "
                  f"resized to min({recipe.image.detail_side}, its side) (at least height), its centre "
                  f"height x width")
    return {
        "model": recipe.name, "heads": heads,
        "input": {"height": recipe.image.height, "width": recipe.image.width, "channels": 3, "layout": "HWC RGB",
                  "scale": input_info.scale, "zero_point": input_info.zero_point,
                  "normalisation": "x = (pixel - 128) / 128",
                  "quantization": "q = pixel - 128" if exact else "q = round(x / scale) + zero_point",
                  "resize": resize, "views": list(views),
                  "detail_side": recipe.image.detail_side if len(views) > 1 else 0},
    }
