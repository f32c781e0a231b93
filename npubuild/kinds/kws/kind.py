"""Keyword spotting as a model kind: MFCC features of 1 s clips (the built-in voice bank of three synthesisers, or a Speech
Commands folder), a softmax over the labels, a recording-like test set, and a streaming detector the
build tunes (an extra stage) and exports with the front end's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.kinds.base import DataPlan, ModelKind
from npubuild.report_text import percent

SIZES = ("train_per_class", "val_per_class", "test_per_class")


class KeywordSpotting(ModelKind):
    name = "keyword_spotting"
    mixes_builtin_data = True  # your recordings with the voice bank (`--voice-bank`, `[mix]`)
    label_field = "labels"
    tables = ("frontend",)
    profile_sizes = SIZES
    architectures = ("ds_cnn_l",)
    metric_note = "Accuracy is top-1"
    folder_help = "Speech Commands layout: one folder per word, _background_noise_/, optional testing_list.txt"

    def check_recipe(self, recipe):
        for label in ("_silence_", "_unknown_"):
            if label not in recipe.labels:
                return "labels", f"must include {label!r} (the built-in data and the detector use it)"
        if recipe.detector is not None:  # the build tunes it: each profile says on how much speech and noise
            for name, prof in recipe.profiles.items():
                for size in ("detector_clips_per_keyword", "detector_noise_seconds"):
                    if getattr(prof, size) <= 0:
                        return f"profiles.{name}.{size}", "must be given and positive (the [detector] is tuned on it)"
        return None

    def data_plan(self, recipe, profile, data_dir, out, log, builtin=None) -> DataPlan:
        from npubuild.kinds.kws import data

        params = {"recipe": recipe.name, "labels": recipe.labels, "frontend": vars(recipe.frontend),
                  "seed": recipe.seed}
        if data_dir is None:
            from npubuild.kinds.kws.engines import program_versions

            params.update(profile={k: getattr(profile, k) for k in (*SIZES, "train_variants")},
                          unknown_words=recipe.unknown_words, source="builtin",
                          engines=program_versions())
            tools = ("espeakng-loader", "scipy", "numpy")
        else:
            from npubuild.kinds.kws.recordings import fingerprint_dir

            params.update(source="speech_commands", fingerprint=fingerprint_dir(data_dir),
                          train_variants=profile.train_variants)
            if builtin is not None:
                params.update(voice_bank=True, real_share=recipe.mix.real_share)
            tools = ("scipy", "numpy")
        share = recipe.mix.real_share
        return DataPlan(params, tools,
                        lambda: data.build_features(recipe, profile, data_dir, out, log, builtin=builtin,
                                                    real_share=share),
                        ("kinds.kws.data", "kinds.kws.recordings"), inputs=(builtin,) if builtin else ())

    def load_split(self, recipe, features, split):
        """A split of the data stage's file, or `test_<engine>`: the test clips that engine spoke."""
        from npubuild.kinds.kws.data import load_split
        from npubuild.kinds.kws.engines import ENGINES

        engine = split.removeprefix("test_")
        if engine in ENGINES:
            from npubuild.kinds.kws.held_out_engine import engine_rows

            x, y = load_split(features, "test")
            rows = engine_rows(features, "test", engine, keep=True)
            return x[rows], y[rows]
        return load_split(features, split)

    def epoch_inputs(self, recipe, features, rows):
        """A rendering per epoch with fresh masks (`data.EpochInputs`); a folder of recordings has one
        rendering, so its epochs differ by the masks."""
        from npubuild.kinds.kws.data import EpochInputs

        return EpochInputs(features, rows)

    def class_weight(self, recipe):
        """`unknown_weight` on `_unknown_`: a synthetic voice bank's unknown words make real keywords, which
        sound unlike any voice of the bank, fall into `_unknown_`; a lighter weight moves that boundary."""
        if recipe.unknown_weight == 1.0:
            return None
        return {i: (recipe.unknown_weight if label == "_unknown_" else 1.0) for i, label in enumerate(recipe.labels)}

    def epoch_samples(self, recipe, features, rows, rows_count):
        """A folder of recordings trains at least as many samples an epoch as the built-in data (and with
        the voice bank, the recordings and the bank's clips together: `data.EpochInputs`)."""
        from npubuild.kinds.kws.data import epoch_samples

        return epoch_samples(features, rows)

    def build_model(self, recipe):
        from npubuild.kinds.kws.model import ds_cnn_l

        fe = recipe.frontend
        return ds_cnn_l(fe.num_frames, fe.num_mfcc, len(recipe.labels))

    # ------------------------------------------------------------------ invoke evaluate

    def builtin_sets(self, recipe, features):
        from npubuild.kinds.kws.engines import ENGINES

        with np.load(features) as d:
            sets = {"test": "test split (voices held out of training)"} if "y_test" in d.files else {}
            if "e_test" in d.files:
                for i, engine in enumerate(ENGINES):
                    if np.any(d["e_test"] == i):
                        sets[f"test_{engine}"] = f"its {engine} clips"
            if "y_test_rec" in d.files:
                sets["test_rec"] = ("recording-like test set (the same held-out voices through rooms, microphones, "
                                    "clipping, DC offset and other noise)")
        return sets

    def evaluation_stages(self, recipe, profile, paths, technique, log):
        """The leave-one-engine-out model (`held_out_engine`), on built-in data that has engines."""
        from npubuild.kinds.kws.held_out_engine import held_out_engine_stage

        with np.load(paths.features) as d:
            if "e_train" not in d.files:
                return []
        return [held_out_engine_stage(recipe, profile, paths, log)]

    def read_folder(self, recipe, data_dir, features):
        from npubuild.kinds.kws.folder import read_kws_folder

        with np.load(features) as d:
            return read_kws_folder(recipe, data_dir, d["mean"], d["std"])

    def summarize(self, recipe, result, paths, technique):
        from npubuild.config import DETECTOR_FIELDS

        sets = result["sets"]
        if {"test", "test_rec"} <= set(sets):
            result["gap_int8_points"] = round(100 * (sets["test"]["int8"]["accuracy"]
                                                     - sets["test_rec"]["int8"]["accuracy"]), 2)
        from npubuild.kinds.kws.held_out_engine import scores_json

        path = scores_json(paths)
        if path.is_file():
            import json

            left = json.loads(path.read_text())
            engine = left["left_out"]
            heard, unheard = left["test"]["others"]["fp32_accuracy"], left["test"][engine]["fp32_accuracy"]
            shipped = sets.get(f"test_{engine}", {}).get("fp32", {}).get("accuracy")
            result["engine_out"] = {
                **left, "gap_fp32_points": round(100 * (heard - unheard), 2),
                "shipped_fp32_on_engine": shipped,
                "cost_of_not_hearing_points": None if shipped is None else round(100 * (shipped - unheard), 2)}
        if recipe.detector is not None:
            from npubuild.kinds.kws.detector import detector_json

            sweep = _sweep_summary(detector_json(paths, technique))
            settings = {k: sweep["chosen"][k] for k in DETECTOR_FIELDS} if sweep else None
            result["detector"] = {"settings": settings, "sweep": sweep}

    def render_scores(self, recipe, result):
        lines = super().render_scores(recipe, result)
        if "gap_int8_points" in result:
            at = lines.index("INT8 accuracy per class:") - 1
            lines[at:at] = ["", f"Gap, INT8 test - recording-like: {result['gap_int8_points']:.2f} points."]
        out = result.get("engine_out")
        if out:
            e = out["left_out"]
            at = lines.index("INT8 accuracy per class:") - 1
            shipped = out["shipped_fp32_on_engine"]
            lines[at:at] = ["", f"Leave one engine out: the FP32 model trained again without {e} "
                                f"({out['train_clips']} training clips) scores {percent(out['test'][e]['fp32_accuracy'], 1)} on the "
                                f"{out['test'][e]['count']} test clips of {e}, an engine it never heard, "
                                f"{percent(out['test']['others']['fp32_accuracy'], 1)} on the other test clips: a gap of "
                                f"{out['gap_fp32_points']:.2f} points. The shipped model (which heard other {e} voices) "
                                f"scores {percent(shipped, 1)} FP32 on the same {e} clips."]
        detector = result.get("detector")
        if detector and detector["settings"]:
            d = detector["settings"]
            lines += ["", f"Streaming detector (tuned by the build, in kws_meta.h): every {d['stride_ms']} ms, "
                          f"average of {d['average_windows']} window(s), threshold {d['threshold']:g}, refractory "
                          f"{d['refractory_ms']} ms."]
            sweep = detector["sweep"]
            c = sweep["chosen"]
            rate = "-" if c.get("detection_rate") is None else f"{100 * c['detection_rate']:.1f}%"
            lines += [f"Chosen by the build's detector stage on {sweep.get('clips_from')} "
                      f"({sweep.get('keyword_clips')} keyword clips in streams, {sweep.get('noise_seconds')} s of "
                      f"{sweep.get('noise_from', 'generated noise')}): detection rate {rate}, {c.get('false_alarms_per_hour')} false alarms per hour "
                      f"of noise, {c.get('wrong_word')} wrong-word detections. Rule: {sweep.get('rule')}"]
        return lines

    # ------------------------------------------------------------------ build extras and assets

    def extra_stages(self, recipe, profile, paths, technique, data_dir, log):
        if recipe.detector is None:
            return []
        from npubuild.kinds.kws.detector import detector_stage

        return [detector_stage(recipe, profile, paths, technique, data_dir, log)]

    def asset_inputs(self, recipe, paths, technique):
        from npubuild.kinds.kws.detector import detector_json

        return [detector_json(paths, technique)] if recipe.detector is not None else []

    def asset_suffixes(self, recipe):
        """The application C (`app_code`): the front end, the detector when there is one, and their sizes."""
        parts = ["frontend", *(["detector"] if recipe.detector is not None else [])]
        return (*(f"_{p}.{ext}" for p in parts for ext in ("h", "c")), "_app_sizes.json")

    def asset_extras(self, recipe, *, int8, features, paths, technique, outputs):
        from npubuild.c_text import float_literal
        from npubuild.kinds.kws.detector import detector_json, threshold_q, tuned_settings
        from npubuild.kinds.kws.frontend import LOG_FLOOR

        context = {}
        if features is not None:
            with np.load(features) as d:
                context.update(frontend=recipe.frontend, log_floor=repr(float(LOG_FLOOR)),
                               mfcc_mean=[float_literal(v) for v in d["mean"]],
                               mfcc_std=[float_literal(v) for v in d["std"]])
        if recipe.detector is not None and paths is not None:
            d = tuned_settings(detector_json(paths, technique))
            context["detector"] = {**vars(d), "threshold_literal": float_literal(d.threshold),
                                   "threshold_q": threshold_q(d, outputs[0].scale, outputs[0].zero_point)}
        return context, {}


def _sweep_summary(path: Path) -> dict | None:
    """The build's detector stage (`detector.tune_detector`): its rule and the chosen setting's figures;
    None when the build has not tuned one."""
    import json

    if not path.is_file():
        return None
    sweep = json.loads(path.read_text())
    keep = ("rule", "false_alarm_limit_per_hour", "keyword_clips", "unknown_clips", "keyword_stream_seconds",
            "noise_seconds", "chosen", "grid", "fixed", "clips_from", "noise_from")
    return {k: sweep[k] for k in keep if k in sweep}
