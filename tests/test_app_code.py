"""Firmware application code (front end, detector, image preprocessing) against the host, with real
compilers: the generated C is built with `cc` into small programs driven through stdin/stdout, and its
numbers compared with the Python the build trains and predicts with. The figures measured are
printed (run with -s) and written to build/app_code_equality.json in the test's tmp folder."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from npubuild import app_code
from npubuild.assets import TensorInfo, _environment, c_identifier, unique_c_identifiers
from npubuild.config import DetectorSettings, load_recipe
from npubuild.int8_runner import dequantize
from npubuild.int8_runner import quantize as quantize_int8
from npubuild.kinds import get_kind
from npubuild.kinds.kws import audio as kws_audio
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws.frontend import LOG_FLOOR, mfcc_batched, standardise
from npubuild.kinds.kws.listen import Decider, StreamingMfcc, threshold_q
from npubuild.kinds.quality.data import prepare
from npubuild.kinds.quality.head_metrics import threshold_q as head_threshold_q
from npubuild.kinds.quality.views import (
    center_square,
    crop_candidates,
    detail_crop,
    detail_square,
    detail_view,
)

ROOT = Path(__file__).resolve().parents[1]
KWS = load_recipe(ROOT / "models" / "kws.toml")
QUALITY = load_recipe(ROOT / "models" / "quality.toml")
FE = KWS.frontend
# A detector setting as the build's detector stage may choose one (the recipe fixes none: the build tunes)
DETECTOR = DetectorSettings(stride_ms=200, average_windows=3, threshold=0.9, refractory_ms=1500)


def app_file_names(recipe) -> list[str]:
    """The application C files (and their sizes) the recipe's kind writes beside the model."""
    return [f"{recipe.name}{s}" for s in get_kind(recipe.kind).asset_suffixes(recipe) if s != "_meta.json"]
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
FIGURES: dict = {}


def _f(x) -> str:
    return repr(float(np.float32(x))) + "f"


def cc() -> str:
    found = shutil.which("cc") or shutil.which("gcc")
    assert found, "a host C compiler is required"
    return found


# --------------------------------------------------------------------------- contexts as assets.py builds them


def synthetic_audio(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tones, chirps, noise bursts, silence and full-scale clipping: float32 on the int16 grid."""
    t = np.arange(n) / FE.sample_rate
    out = np.zeros(n)
    for start in range(0, n, FE.sample_rate // 4):
        seg = slice(start, min(n, start + FE.sample_rate // 4))
        kind = rng.integers(5)
        level = 10 ** rng.uniform(-4, 0)
        if kind == 0:
            out[seg] = level * np.sin(2 * np.pi * rng.uniform(50, 7000) * t[seg])
        elif kind == 1:
            f0 = rng.uniform(100, 1000)
            out[seg] = level * np.sin(2 * np.pi * (f0 + 3000 * (t[seg] - t[seg][0])) * t[seg])
        elif kind == 2:
            out[seg] = level * rng.standard_normal(len(t[seg])) / 3
        elif kind == 3:
            out[seg] = 0.0  # digital silence: every mel energy at the log floor
        else:
            out[seg] = np.clip(3 * np.sin(2 * np.pi * rng.uniform(100, 500) * t[seg]), -1, 1)
    return to_int16(out)


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(audio) * 32768), -32768, 32767).astype(np.int16)


def kws_context(rng: np.random.Generator, settings: DetectorSettings | None = None,
                output: tuple[float, int] = (1 / 256, -128)) -> dict:
    """The context `assets.write_model_assets` gives its templates for a KWS model, with the
    standardisation statistics and input quantization of synthetic audio (no build needed)."""
    audio = np.stack([synthetic_audio(rng, FE.clip_samples) for _ in range(8)]).astype(np.float32) / 32768.0
    feats = mfcc_batched(audio, FE)
    mean, std = feats.reshape(-1, FE.num_mfcc).mean(0), feats.reshape(-1, FE.num_mfcc).std(0) + 1e-3
    x = standardise(feats, mean, std)
    scale = float(np.float32((x.max() - x.min()) / 255))
    zero = int(round(-128 - x.min() / scale))
    settings = settings or DETECTOR
    out_info = TensorInfo((1, len(KWS.labels)), "int8", float(np.float32(output[0])), output[1])
    context = {
        "name": "kws", "guard": "KWS", "symbol_base": "kws", "source_name": "kws_vela.tflite", "sha256": "0" * 64,
        "labels": list(KWS.labels), "input": TensorInfo((1, FE.num_frames, FE.num_mfcc, 1), "int8", scale, zero),
        "output": out_info, "outputs": [out_info], "frontend": FE, "log_floor": repr(float(LOG_FLOOR)),
        "mfcc_mean": [_f(v) for v in mean], "mfcc_std": [_f(v) for v in std], "quality": None,
        "detector": {**vars(settings), "threshold_literal": _f(settings.threshold),
                     "threshold_q": threshold_q(settings, out_info.scale, out_info.zero_point)},
    }
    return context | {"_mean": np.float32(mean), "_std": np.float32(std)}


def quality_context(rng: np.random.Generator) -> dict:
    """The context for the quality model: heads in a shuffled output order, thresholds per head, each
    head reading the view the recipe gives it."""
    heads, size = list(QUALITY.heads), QUALITY.image.height
    order = [int(i) for i in rng.permutation(len(heads))]
    outs = [TensorInfo((1, 1), "int8", float(np.float32(1 / 256)), -128) for _ in heads]
    meta_heads = []
    for i, head in enumerate(heads):
        threshold = float(np.float32(rng.uniform(0.05, 0.95)))
        meta_heads.append({"name": head, "output_index": order[i], "scale": outs[order[i]].scale,
                           "zero_point": outs[order[i]].zero_point, "threshold": threshold,
                           "threshold_q": head_threshold_q(threshold, outs[order[i]].scale,
                                                           outs[order[i]].zero_point),
                           "view": "detail" if head in QUALITY.image.detail_heads else "whole"})
    quality = {"model": "quality", "heads": meta_heads,
               "input": {"height": size, "width": size, "channels": 3, "layout": "HWC RGB",
                         "scale": 1 / 128, "zero_point": 0, "quantization": "q = pixel - 128",
                         "resize": "centre square crop, then resize", "detail_side": QUALITY.image.detail_side},
               "head_macros": [m.upper() for m in unique_c_identifiers(heads)]}
    return {"name": "quality", "guard": "QUALITY", "symbol_base": "quality", "source_name": "quality_vela.tflite",
            "sha256": "0" * 64, "labels": heads, "input": TensorInfo((1, size, size, 3), "int8", 1 / 128, 0),
            "output": outs[0], "outputs": outs, "frontend": None, "detector": None, "quality": quality}


def render(context: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = app_code.render_app_code(_environment(), {k: v for k, v in context.items() if not k.startswith("_")},
                                     folder)
    for path, text in files.items():
        path.write_text(text)
    return sorted(files)


def build(folder: Path, sources: list[str], main: str, name: str = "driver") -> Path:
    (folder / f"{name}.c").write_text(textwrap.dedent(main))
    exe = folder / name
    proc = subprocess.run([cc(), *CFLAGS, f"-I{folder}", str(folder / f"{name}.c"),
                           *[str(folder / s) for s in sources], "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def record(name: str, **figures) -> None:
    FIGURES[name] = figures
    print(f"\n{name}: {json.dumps(figures)}")


# --------------------------------------------------------------------------- front end

FRONTEND_MAIN = """
    #include <stdio.h>
    #include "kws_frontend.h"
    /* stdin: int16 samples; stdout per stride: ready byte, then (if a row) NUM_MFCC floats, the row's
       NUM_MFCC int8 (the input's last row), an input-ready byte and (if ready) the whole input */
    int main(void) {
        int16_t block[KWS_FRONTEND_STRIDE_SAMPLES];
        float mfcc[KWS_FRONTEND_NUM_MFCC];
        int8_t input[KWS_FRONTEND_INPUT_SIZE];
        kws_frontend_reset();
        while (fread(block, sizeof block[0], KWS_FRONTEND_STRIDE_SAMPLES, stdin) == KWS_FRONTEND_STRIDE_SAMPLES) {
            char row = (char)kws_frontend_push(block, mfcc), ready;
            fwrite(&row, 1, 1, stdout);
            if (!row) continue;
            fwrite(mfcc, sizeof mfcc[0], KWS_FRONTEND_NUM_MFCC, stdout);
            ready = (char)kws_frontend_input(input);
            fwrite(&ready, 1, 1, stdout);
            if (ready) fwrite(input, 1, KWS_FRONTEND_INPUT_SIZE, stdout);
            else fwrite(input, 0, 0, stdout);
        }
        printf("%lld", (long long)kws_frontend_window_end());
        return 0;
    }
"""


def run_frontend(exe: Path, samples: np.ndarray):
    """C front end over a stream: (float rows, int8 windows (the input after each row, once ready), end)."""
    out = subprocess.run([str(exe)], input=samples.astype("<i2").tobytes(), capture_output=True, check=True).stdout
    rows, windows, pos = [], [], 0
    for _ in range(len(samples) // FE.stride_samples):
        flag = out[pos]
        pos += 1
        if not flag:
            continue
        rows.append(np.frombuffer(out[pos:pos + 4 * FE.num_mfcc], "<f4"))
        pos += 4 * FE.num_mfcc
        ready = out[pos]
        pos += 1
        if ready:
            size = FE.num_frames * FE.num_mfcc
            windows.append(np.frombuffer(out[pos:pos + size], np.int8).reshape(FE.num_frames, FE.num_mfcc))
            pos += size
    return np.array(rows), np.array(windows), int(out[pos:].decode())


def python_frontend(samples: np.ndarray, context: dict):
    """The host: StreamingMfcc fed stride by stride, standardised and quantized as KwsModel feeds the model."""
    stream = StreamingMfcc(FE)
    audio = samples.astype(np.float32) / 32768.0  # kws_audio.read_wav's int16 conversion
    rows, windows = [], []
    for start in range(0, len(audio) - FE.stride_samples + 1, FE.stride_samples):
        frames = stream.push(audio[start:start + FE.stride_samples])
        rows += list(frames)
        window = stream.window()
        if len(frames) and window is not None:
            x = standardise(window, context["_mean"], context["_std"])
            windows.append(quantize_int8(x, context["input"].scale, context["input"].zero_point))
    return np.array(rows), np.array(windows)


@pytest.fixture(scope="module")
def frontend_program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frontend")
    context = kws_context(np.random.default_rng(1))
    render(context, folder)
    return build(folder, ["kws_frontend.c"], FRONTEND_MAIN), context


@pytest.fixture(scope="module")
def speech_clips():
    """Four keywords spoken by the built-in synthesiser (one clip each)."""
    rng = np.random.default_rng(5)
    voices = kws_data.split_voices(KWS.seed)["test"]
    specs = [kws_data.ClipSpec(label=KWS.labels.index(w), word=w, voice=voices[i % len(voices)], rate_wpm=140,
                               pitch=50, pitch_range=50, seed=int(rng.integers(2**31)), recording=i % 2 == 1)
             for i, w in enumerate(("yes", "stop", "left", "go"))]
    return kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1)


def compare_frontend(name: str, exe: Path, context: dict, samples: np.ndarray) -> dict:
    c_rows, c_windows, end = run_frontend(exe, samples)
    py_rows, py_windows = python_frontend(samples, context)
    assert c_rows.shape == py_rows.shape and c_windows.shape == py_windows.shape
    diff = np.abs(c_windows.astype(np.int16) - py_windows.astype(np.int16))
    # each row appears in up to NUM_FRAMES windows: count every distinct value once (by row) as well
    row_q = lambda w: np.concatenate([w[0], w[1:, -1]])  # noqa: E731
    row_diff = np.abs(row_q(c_windows).astype(np.int16) - row_q(py_windows).astype(np.int16))
    figures = {"rows": len(c_rows), "windows": len(c_windows), "values": int(row_diff.size),
               "equal_fraction": round(float((row_diff == 0).mean()), 6), "max_step_difference": int(diff.max()),
               "window_values_equal_fraction": round(float((diff == 0).mean()), 6),
               "max_mfcc_abs_difference": float(np.abs(c_rows - py_rows).max())}
    record(name, **figures)
    assert end == (len(c_rows) - 1) * FE.stride_samples + FE.window_samples
    assert figures["equal_fraction"] >= 0.999 and figures["window_values_equal_fraction"] >= 0.999
    assert diff.max() <= 1
    return figures


def test_frontend_equals_host_on_a_generated_stream(frontend_program):
    exe, context = frontend_program
    samples = synthetic_audio(np.random.default_rng(2), 12 * FE.sample_rate)
    compare_frontend("frontend, generated 12 s stream", exe, context, samples)


def test_frontend_equals_host_on_spoken_keywords(frontend_program, speech_clips):
    exe, context = frontend_program
    rng = np.random.default_rng(3)
    noise = kws_audio.make_noise(rng, len(speech_clips) * FE.clip_samples + FE.sample_rate, FE.sample_rate) * 0.01
    stream = np.concatenate([np.zeros(FE.sample_rate // 2, np.float32), *speech_clips])
    stream = stream + noise[:len(stream)]
    compare_frontend("frontend, 4 spoken keyword clips in noise", exe, context, to_int16(stream))
    for clip in speech_clips:  # each clip alone: its one window is the clip's batch features
        c_rows, c_windows, _ = run_frontend(exe, to_int16(clip))
        batch = quantize_int8(standardise(mfcc_batched(to_int16(clip)[None].astype(np.float32) / 32768.0, FE)[0],
                                          context["_mean"], context["_std"]),
                              context["input"].scale, context["input"].zero_point)
        assert len(c_windows) == 1 and np.abs(c_windows[0].astype(int) - batch).max() <= 1


def test_frontend_waits_for_a_window_and_a_second(frontend_program):
    exe, _ = frontend_program
    rows, windows, end = run_frontend(exe, np.zeros(FE.clip_samples - FE.stride_samples, np.int16))
    assert len(rows) == FE.num_frames - 1 and len(windows) == 0
    rows, windows, end = run_frontend(exe, np.zeros(FE.clip_samples, np.int16))
    assert len(rows) == FE.num_frames and len(windows) == 1 and end == FE.clip_samples


# --------------------------------------------------------------------------- detector

DETECTOR_MAIN = """
    #include <stdio.h>
    #include "kws_detector.h"
    /* stdin: runs of (int64 window end, NUM_LABELS int8); stdout: "label time sum" per detection */
    int main(int argc, char **argv) {
        int8_t outputs[KWS_DETECT_NUM_LABELS];
        int64_t end;
        kws_detection_t d;
        unsigned f;
        (void)argv;
        if (argc > 1) { /* the schedule: frames at which the model is due */
            for (f = 0; f < 400; f++) if (kws_detector_due(f)) printf("%u ", f);
            return 0;
        }
        kws_detector_reset();
        while (fread(&end, sizeof end, 1, stdin) == 1 && fread(outputs, 1, sizeof outputs, stdin) == sizeof outputs)
            if (kws_detector_push(outputs, end, &d)) printf("%d %lld %ld\\n", d.label, (long long)d.time, (long)d.sum);
        return 0;
    }
"""

DETECTOR_SETTINGS = [
    DetectorSettings(stride_ms=200, average_windows=3, threshold=0.9, refractory_ms=1500),
    DetectorSettings(stride_ms=20, average_windows=1, threshold=0.5, refractory_ms=0),
    DetectorSettings(stride_ms=100, average_windows=8, threshold=0.7, refractory_ms=500),
    DetectorSettings(stride_ms=40, average_windows=5, threshold=1.0, refractory_ms=2000),
    DetectorSettings(stride_ms=60, average_windows=2, threshold=0.4, refractory_ms=1000),
]


def output_sequences(rng: np.random.Generator, n_labels: int) -> dict[str, np.ndarray]:
    """Random and structured int8 output sequences."""
    n = 600
    bursts = np.full((n, n_labels), -128, np.int8)
    for start in rng.integers(0, n - 10, 40):
        bursts[start:start + rng.integers(1, 10), rng.integers(n_labels)] = rng.integers(60, 128)
    ties = np.full((n, n_labels), -128, np.int8)
    ties[::7, 2:] = 127  # every keyword equal: the first must win
    ties[3::11, [4, 7]] = 126
    near = rng.integers(100, 128, (n, n_labels)).astype(np.int8)  # sums around the threshold
    return {"random": rng.integers(-128, 128, (n, n_labels)).astype(np.int8), "bursts": bursts, "ties": ties,
            "near_threshold": near, "all_max": np.full((50, n_labels), 127, np.int8)}


def test_detector_decides_as_listen_decider(tmp_path):
    rng = np.random.default_rng(4)
    labels = list(KWS.labels)
    compared = detections = 0
    for k, settings in enumerate(DETECTOR_SETTINGS):
        out_scale, out_zero = [(1 / 256, -128), (0.00390625, -128), (0.0041, -120)][k % 3]
        context = kws_context(np.random.default_rng(10 + k), settings, (out_scale, out_zero))
        folder = tmp_path / f"s{k}"
        render(context, folder)
        exe = build(folder, ["kws_detector.c"], DETECTOR_MAIN)
        every = settings.stride_ms * FE.sample_rate // (1000 * FE.stride_samples)
        due = [int(f) for f in subprocess.run([str(exe), "due"], capture_output=True, text=True,
                                              check=True).stdout.split()]
        # listen.Detector.push: due after `count` rows when count >= num_frames and (count - num_frames) % every == 0
        assert due == [c for c in range(400) if c >= FE.num_frames and (c - FE.num_frames) % every == 0]
        scale = context["output"].scale
        for name, q in output_sequences(rng, len(labels)).items():
            ends = (np.arange(len(q)) * every + FE.num_frames - 1) * FE.stride_samples + FE.window_samples
            stdin = b"".join(struct.pack("<q", int(e)) + row.tobytes() for e, row in zip(ends, q, strict=True))
            lines = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True).stdout.decode().split("\n")
            got = [(labels[int(a)], round(int(b) / FE.sample_rate, 4), round(float(scale * (int(c) / settings.average_windows
                                                                                           - out_zero)), 4))
                   for a, b, c in (line.split() for line in lines if line)]
            decider = Decider(settings, labels, scale, out_zero, FE.sample_rate)
            half = len(q) // 2  # the host in two steps (its state carries over), the C run by run
            found = decider.step(q[:half], ends[:half])[0] + decider.step(q[half:], ends[half:])[0]
            expected = [(d.word, d.time_s, d.score) for d in found]
            assert got == expected, (settings, name)
            compared += 1
            detections += len(expected)
    record("detector vs listen.Decider", settings=len(DETECTOR_SETTINGS), sequences=compared,
           detections=detections, identical=True)


# --------------------------------------------------------------------------- image preprocessing

PREPROCESS_MAIN = """
    #include <stdio.h>
    #include <stdlib.h>
    #include "quality_preprocess.h"
    /* argv: format (888, 565 or issues), width, height, stride, view (0 whole, 1 detail); stdin: the frame;
     * stdout: the int8 input. Issues: rows of the whole view's and the detail view's outputs -> mask */
    static int8_t input[QUALITY_PREPROCESS_INPUT_SIZE];
    int main(int argc, char **argv) {
        if (argc < 6) return 1;
        long w = strtol(argv[2], NULL, 10), h = strtol(argv[3], NULL, 10), stride = strtol(argv[4], NULL, 10);
        int format = atoi(argv[1]), detail = atoi(argv[5]), status;
        if (format == 0) {
            int8_t q[2][QUALITY_NUM_HEAD_OUTPUTS];
            while (fread(q, 1, sizeof q, stdin) == sizeof q)
                printf("%lu\\n", (unsigned long)quality_issues(q[0], q[1]));
            return 0;
        }
        size_t bytes = (size_t)stride * (size_t)h * (format == 888 ? 1u : 2u);
        void *frame = malloc(bytes);
        if (frame == NULL || fread(frame, 1, bytes, stdin) != bytes) return 2;
        if (detail)
            status = format == 888
                ? quality_preprocess_detail_rgb888(frame, (int32_t)w, (int32_t)h, (int32_t)stride, input)
                : quality_preprocess_detail_rgb565(frame, (int32_t)w, (int32_t)h, (int32_t)stride, input);
        else
            status = format == 888
                ? quality_preprocess_rgb888(frame, (int32_t)w, (int32_t)h, (int32_t)stride, input)
                : quality_preprocess_rgb565(frame, (int32_t)w, (int32_t)h, (int32_t)stride, input);
        if (status != QUALITY_PREPROCESS_OK) return 10 - status;
        fwrite(input, 1, sizeof input, stdout);
        free(frame);
        return 0;
    }
"""


@pytest.fixture(scope="module")
def preprocess_program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preprocess")
    context = quality_context(np.random.default_rng(6))
    render(context, folder)
    return build(folder, ["quality_preprocess.c"], PREPROCESS_MAIN), context


def make_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth shapes, edges, fine texture and noise, saturated corners: uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f * x + g * y)) for f, g in rng.uniform(0.5, 6, (3, 2))], -1)
    base[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05] *= 0.3
    base += rng.normal(0, 0.08, base.shape)
    base[: height // 8, : width // 8] = 1.0
    return np.clip(np.round(base * 255), 0, 255).astype(np.uint8)


def rgb565(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack to RGB565 and widen back by bit replication, as the C reads it: (packed, its RGB888)."""
    r, g, b = (image[..., i].astype(np.uint16) for i in range(3))
    packed = ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)
    r5, g6, b5 = packed >> 11, (packed >> 5) & 63, packed & 31
    wide = np.stack([(r5 << 3) | (r5 >> 2), (g6 << 2) | (g6 >> 4), (b5 << 3) | (b5 >> 2)], -1).astype(np.uint8)
    return packed, wide


def run_preprocess(exe: Path, image: np.ndarray, fmt: int, pad: int = 0, detail: bool = False) -> np.ndarray:
    h, w = image.shape[:2]
    if fmt == 888:
        frame = np.zeros((h, w * 3 + pad), np.uint8)
        frame[:, :w * 3] = image.reshape(h, w * 3)
        stride = w * 3 + pad
    else:
        frame = np.zeros((h, w + pad), "<u2")
        frame[:, :w] = image
        stride = w + pad
    proc = subprocess.run([str(exe), str(fmt), str(w), str(h), str(stride), str(int(detail))],
                          input=frame.tobytes(), capture_output=True, check=True)
    size = QUALITY.image.height
    return np.frombuffer(proc.stdout, np.int8).reshape(size, size, 3)


FRAME_SIZES = [(480, 640), (241, 333), (128, 128), (1080, 720), (97, 203), (64, 64), (130, 129), (2000, 1501)]


def test_preprocess_within_one_step_of_prepare(preprocess_program):
    """Both views (`views.py`): the whole view as `data.prepare` makes it, the detail view as
    `views.detail_view` (frames smaller and larger than the detail side, odd sizes, strides)."""
    exe, _ = preprocess_program
    rng = np.random.default_rng(7)
    size, detail_side = QUALITY.image.height, QUALITY.image.detail_side
    assert detail_side > size  # the recipe has a detail view
    rows, off_centre = [], 0
    for h, w in FRAME_SIZES:
        image = make_image(rng, h, w)
        packed, wide = rgb565(image)
        n = detail_square(min(h, w), size, detail_side)
        off_centre += detail_crop(center_square(image), n, size) != crop_candidates(n, size)[0]
        for fmt, frame, reference in ((888, image, image), (565, packed, wide)):
            for view in ("whole", "detail"):
                got = run_preprocess(exe, frame, fmt, pad=3 if (h + w) % 2 else 0, detail=view == "detail")
                host = prepare(reference, size) if view == "whole" else detail_view(reference, size, detail_side)
                expected = host.astype(np.int16) - 128  # q = pixel - 128 (meta.h)
                diff = np.abs(got.astype(np.int16) - expected)
                rows.append({"frame": f"{w}x{h}", "format": f"RGB{fmt}", "view": view,
                             "equal_fraction": round(float((diff == 0).mean()), 6),
                             "max_step_difference": int(diff.max()), "values_differing": int((diff > 0).sum())})
                assert diff.max() <= 1, rows[-1]
    assert off_centre >= 2  # the C picked the same off-centre crops as the host (else the pixels differ)
    record("preprocess vs quality_data.prepare", frames=rows,
           values=len(rows) * size * size * 3, values_differing=sum(r["values_differing"] for r in rows),
           equal_fraction_min=min(r["equal_fraction"] for r in rows),
           max_step_difference=max(r["max_step_difference"] for r in rows))


def test_preprocess_rejects_bad_sizes(preprocess_program):
    exe, _ = preprocess_program
    for view in ("0", "1"):
        proc = subprocess.run([str(exe), "888", "0", "10", "0", view], input=b"", capture_output=True)
        assert proc.returncode == 11  # BAD_SIZE
        proc = subprocess.run([str(exe), "888", "10", "10", "20", view], input=bytes(200), capture_output=True)
        assert proc.returncode == 11  # stride shorter than a row


def test_issues_are_the_heads_thresholds(preprocess_program):
    exe, context = preprocess_program
    rng = np.random.default_rng(8)
    heads = context["quality"]["heads"]
    assert {h["view"] for h in heads} == {"whole", "detail"}
    q = rng.integers(-128, 128, (4000, 2, len(heads))).astype(np.int8)  # the whole view's outputs, the detail's
    q[:256, :, :] = np.arange(-128, 128)[:, None, None]  # every value on every output
    q[256:512, 1, :] = np.arange(127, -129, -1)[:, None]  # and against every other value of the other view
    stdin = q.tobytes()
    got = [int(v) for v in subprocess.run([str(exe), "0", "0", "0", "0", "0"], input=stdin, capture_output=True,
                                          check=True).stdout.split()]
    expected = []
    for rows in q:
        mask = 0
        for i, head in enumerate(heads):
            raw = rows[int(head["view"] == "detail"), head["output_index"]]
            fires = bool(dequantize(raw, head["scale"], head["zero_point"]) >= np.float32(head["threshold"]))
            assert fires == (int(raw) >= head["threshold_q"])  # the float and the int8 decision agree
            mask |= fires << i
        expected.append(mask)
    assert got == expected
    record("quality issues vs thresholds", rows=len(q), identical=True)


# --------------------------------------------------------------------------- compilers and sizes


def test_generated_c_is_warning_free_on_both_compilers_and_deterministic(tmp_path):
    contexts = {"kws": kws_context(np.random.default_rng(1)), "quality": quality_context(np.random.default_rng(6))}
    gcc = shutil.which("arm-none-eabi-gcc")
    assert gcc, "arm-none-eabi-gcc is required (apt install gcc-arm-none-eabi)"
    for name, context in contexts.items():
        a, b = tmp_path / name / "a", tmp_path / name / "b"
        files = render(context, a)
        render(context, b)
        assert [p.read_bytes() for p in files] == [(b / p.name).read_bytes() for p in files]
        text = "".join(p.read_text() for p in files)
        assert str(tmp_path) not in text and "20" + "26-" not in text
        for source in (p for p in files if p.suffix == ".c"):
            for compiler, flags in ((cc(), CFLAGS + ["-pedantic"]),
                                    (gcc, ["-mcpu=cortex-m55", "-mthumb", *CFLAGS])):
                proc = subprocess.run([compiler, *flags, f"-I{a}", "-c", str(source), "-o", str(tmp_path / "x.o")],
                                      capture_output=True, text=True)
                assert proc.returncode == 0, (compiler, source.name, proc.stderr)
        # C++ firmware includes the headers too
        for header in (p for p in files if p.suffix == ".h"):
            main = tmp_path / name / "cpp.cpp"
            main.write_text(f'#include "{header.name}"\nint main() {{ return 0; }}\n')
            cxx = shutil.which("c++") or shutil.which("g++")
            if cxx:
                proc = subprocess.run([cxx, "-Wall", "-Wextra", "-Werror", f"-I{a}", "-c", str(main), "-o",
                                       str(tmp_path / "y.o")], capture_output=True, text=True)
                assert proc.returncode == 0, proc.stderr


def test_app_sizes_for_cortex_m55_and_without_the_compiler(tmp_path, monkeypatch):
    figures = {}
    for name, context in {"kws": kws_context(np.random.default_rng(1)),
                          "quality": quality_context(np.random.default_rng(6))}.items():
        files = render(context, tmp_path / name)
        sizes = app_code.app_sizes([p for p in files if p.suffix == ".c"])
        assert sizes["code_flash_bytes"] > 0 and sizes["app_sram_bytes"] > 0, sizes
        figures[name] = {k: sizes[k] for k in ("code_flash_bytes", "app_sram_bytes", "files")}
    # the front end's buffers: int16 samples of a window, the FFT scratch (float32), the ring of int8 rows
    assert figures["kws"]["app_sram_bytes"] >= 2 * FE.window_samples + 4 * FE.fft_size + FE.num_frames * FE.num_mfcc
    record("application code on Cortex-M55", **figures)
    monkeypatch.setenv("PATH", str(tmp_path))  # no arm-none-eabi-gcc: sizes skipped with a note
    sizes = app_code.app_sizes([tmp_path / "kws" / "kws_frontend.c"])
    assert sizes["code_flash_bytes"] is None and "not found" in sizes["note"]


def test_file_names_match_what_is_rendered():
    assert app_file_names(KWS) == ["kws_frontend.h", "kws_frontend.c", "kws_detector.h", "kws_detector.c",
                                            "kws_app_sizes.json"]
    assert app_file_names(QUALITY) == ["quality_preprocess.h", "quality_preprocess.c", "quality_app_sizes.json"]
    assert app_file_names(replace(KWS, detector=None)) == ["kws_frontend.h", "kws_frontend.c", "kws_app_sizes.json"]
    assert c_identifier(KWS.name) == "kws"


@pytest.fixture(scope="module", autouse=True)
def write_figures(tmp_path_factory):
    yield
    if FIGURES:
        path = tmp_path_factory.getbasetemp() / "app_code_equality.json"
        path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
        print(f"\nfigures: {path}")


def test_report_adds_application_code_to_flash_and_buffers_to_sram(tmp_path):
    from npubuild.config import load_target
    from npubuild.report import ModelFigures, build_report

    target = load_target(ROOT / "targets" / "corstone-300-u55-128.toml")
    plain = ModelFigures(name="kws", technique="ptq", sram_bytes=1000, flash_bytes=5000, vela_sram_bytes=900,
                         vela_flash_bytes=4000, arena_bytes=1000, npu_ops=1, cpu_ops=0, cpu_op_names=[], cycles=1,
                         inference_ms=1.0, macs=1, tflite_bytes=1, accuracy={"fp32": 1.0, "int8": 1.0})
    path = tmp_path / "kws_app_sizes.json"
    path.write_text(json.dumps({"code_flash_bytes": 300, "app_sram_bytes": 40}))
    with_code = app_code.with_app_sizes(plain, path)
    before, after = build_report(target, [plain]), build_report(target, [with_code])
    assert after["total"]["flash_bytes"] == before["total"]["flash_bytes"] + 300
    assert after["total"]["sram_bytes"] == before["total"]["sram_bytes"] + 40
    assert after["models"][0]["code_flash_bytes"] == 300 and after["models"][0]["flash_bytes"] == 5000
    assert "kws application code" in [p["part"] for p in after["total"]["flash"]["parts"]]
    path.write_text(json.dumps({"code_flash_bytes": None, "app_sram_bytes": None, "note": "not found"}))
    assert app_code.with_app_sizes(plain, path) == plain  # not measured: nothing added
    assert app_code.with_app_sizes(plain, None) == plain


# --------------------------------------------------------------------------- the smoke build's own files


def _define(text: str, name: str) -> str:
    import re

    return re.search(rf"#define {name} (.*)", text).group(1).strip()


@pytest.mark.slow
def test_smoke_build_ships_the_loop_equal_to_listen(smoke_project, tmp_path):
    """The build's own files: generated beside the model from the build's numbers, sized in the report;
    the C front end -> the INT8 model (reference kernels) -> the C detector gives what `invoke listen`'s
    Detector gives on the same audio."""
    from npubuild.assets import io_tensors
    from npubuild.golden_vectors import run_litert
    from npubuild.kinds.kws.listen import Detector, KwsModel

    from .conftest import TARGET

    root, _, _ = smoke_project
    assets = root / "firmware_assets" / TARGET
    base = root / "build" / "smoke" / "kws" / "builtin"
    int8, features = base / KWS.ship / "kws_int8.tflite", base / "data" / "features.npz"
    folder = tmp_path / "kws"
    shutil.copytree(assets / "kws", folder)
    for name in app_file_names(KWS) + app_file_names(QUALITY):
        assert (assets / name.split("_")[0] / name).is_file(), name
    meta, detector_c = (folder / "kws_meta.h").read_text(), (folder / "kws_detector.c").read_text()
    number = lambda text: int(text.replace("(int32_t)", "").strip("()"))  # noqa: E731
    assert number(_define(meta, "KWS_DETECT_THRESHOLD_Q")) == number(_define(detector_c, "THRESHOLD_Q"))
    qmeta, qpre = (assets / "quality" / "quality_meta.h").read_text(), (assets / "quality" / "quality_preprocess.c")
    assert _define(qmeta, "QUALITY_HEAD_THRESHOLD_Q").strip("{}") in qpre.read_text()
    report = json.loads((assets / "memory_report.json").read_text())
    for name in ("kws", "quality"):
        sizes = json.loads((assets / name / f"{name}{app_code.SIZES_SUFFIX}").read_text())
        model = next(m for m in report["models"] if m["name"] == name)
        assert (model["code_flash_bytes"], model["app_sram_bytes"]) == (sizes["code_flash_bytes"],
                                                                      sizes["app_sram_bytes"]) != (0, 0)
    # front end with the build's statistics and input quantization
    with np.load(features) as d:
        context = {"_mean": np.float32(d["mean"]), "_std": np.float32(d["std"]), "input": io_tensors(int8)[0]}
    exe = build(folder, ["kws_frontend.c"], FRONTEND_MAIN, "frontend")
    rng = np.random.default_rng(9)
    samples = synthetic_audio(rng, 30 * FE.sample_rate)
    compare_frontend("frontend, smoke build's numbers, 30 s stream", exe, context, samples)
    # the loop: C windows -> model -> C detector, against listen.Detector on the same audio
    settings = replace(DETECTOR, threshold=0.3, average_windows=2, stride_ms=40, refractory_ms=500)
    model = KwsModel.from_build(int8, features, KWS.labels)
    detector_context = kws_context(np.random.default_rng(1), settings, (model.output.scale, model.output.zero_point))
    render(detector_context, tmp_path / "detector")
    det = build(tmp_path / "detector", ["kws_detector.c"], DETECTOR_MAIN)
    _, windows, _ = run_frontend(exe, samples)
    every = settings.stride_ms * FE.sample_rate // (1000 * FE.stride_samples)
    due = np.arange(0, len(windows), every)
    q = run_litert(int8, windows[due].reshape(len(due), -1))
    ends = (due + FE.num_frames - 1) * FE.stride_samples + FE.window_samples
    stdin = b"".join(struct.pack("<q", int(e)) + row.tobytes() for e, row in zip(ends, q, strict=True))
    lines = subprocess.run([str(det)], input=stdin, capture_output=True, check=True).stdout.decode().split("\n")
    got = [(KWS.labels[int(a)], round(int(b) / FE.sample_rate, 4)) for a, b, _ in (x.split() for x in lines if x)]
    decider = Decider(settings, KWS.labels, model.output.scale, model.output.zero_point, FE.sample_rate)
    assert got == [(d.word, d.time_s) for d in decider.step(q, ends)[0]]  # the C detector on the C chain
    host = Detector(model, settings, FE)
    host.push(samples.astype(np.float32) / 32768.0)
    # the host's windows are the C windows but for the rare one-step input differences measured above
    # (rare per value, so a share of the 490-value windows has one): where a window's inputs
    # are the same, so are the model's outputs; where they are not, a one-step input can move an output
    # by a few steps, as much as the model's sensitivity makes it (the smoke model is trained one epoch)
    same = np.all(host.outputs_q == q, axis=1)
    _, host_windows = python_frontend(samples, context)
    same_input = np.all(host_windows[due] == windows[due], axis=(1, 2))
    record("loop on the smoke build (C front end -> INT8 model -> C detector vs listen.Detector)",
           windows=len(q), windows_with_equal_inputs=int(same_input.sum()), windows_with_equal_outputs=int(same.sum()),
           max_output_step_difference=int(np.abs(host.outputs_q.astype(int) - q).max()),
           detections_c=len(got), detections_host=len(host.detections),
           detections_identical=got == [(d.word, d.time_s) for d in host.detections])
    assert same[same_input].all() and same_input.mean() >= 0.85
    if same.all():
        assert got == [(d.word, d.time_s) for d in host.detections]
