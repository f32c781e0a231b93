"""`invoke listen`: streaming MFCC equals the batch front end; the detector finds keywords in a recording
as firmware would (real model, real LiteRT reference kernels, real eSpeak NG clips, through `invoke`)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from npubuild.config import DetectorSettings, DetectorTuning, load_recipe
from npubuild.errors import BuildError
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws import listen, streams
from npubuild.kinds.kws.frontend import mfcc

from .conftest import ROOT, TARGET, code_env, make_project

RECIPE = load_recipe(ROOT / "models" / "kws.toml")
FE = RECIPE.frontend
LINE = re.compile(r"^\s*(\d+\.\d+) s\s+(\S+)\s+(\d\.\d+)$")

KEYWORDS = ("yes", "left", "stop", "go")
WORDS = ("yes", "stop", "left", "go", "left", "yes")  # what the recording says, in order
# The model the end-to-end tests train: good enough to recognise words from voices it never heard, small
# enough to build in about two minutes on two cores: four of the keywords, 250 clips per class (half of
# them from the Flite/Festival voices, every clip a perturbed speaker). Config knows only its named
# profiles, so the copy's smoke profile is resized (the repository's is left alone).
LISTEN_LABELS = "labels = " + json.dumps(["_silence_", "_unknown_", *KEYWORDS])
LISTEN_PROFILE = """[profiles.smoke]
train_per_class = 250
val_per_class = 5
test_per_class = 5
epochs = 10
batch_size = 32
learning_rate = 0.002
prune_epochs = 1
cluster_epochs = 1
qat_epochs = 1
finetune_samples = 0
detector_clips_per_keyword = 2
detector_unknown_clips = 2
detector_noise_seconds = 20
"""
# The end-to-end tests fix the detector (a recipe may fix any setting; the build then tunes only the
# rest): the small model's outputs on a handful of tuning clips would make a tuned choice arbitrary.
LISTEN_DETECTOR = """[detector]
stride_ms = 200
average_windows = 3
threshold = 0.75
refractory_ms = 1500
"""
def _table(text: str, header: str) -> tuple[int, int]:
    """Where the TOML table starting at `header` is in `text` (to the next table or the end)."""
    start = text.index(header)
    end = text.find("\n[", start + 1)
    return start, (end + 1 if end >= 0 else len(text))


def _replace_table(text: str, header: str, table: str) -> str:
    start, end = _table(text, header)
    return text[:start] + table + ("\n" + text[end:] if end < len(text) else "")


SHIPPED_TOML = (ROOT / "models" / "kws.toml").read_text()
SHIPPED_DETECTOR = SHIPPED_TOML[slice(*_table(SHIPPED_TOML, "[detector]"))] + "\n" + LISTEN_DETECTOR.split("\n", 1)[1]


def invoke(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`invoke listen ...` in project `root` (which holds a copy of tasks.py), as a user runs it."""
    return subprocess.run([sys.executable, "-m", "invoke", "listen", *args], cwd=root, env=code_env(), capture_output=True,
                          text=True, timeout=300)


def write_wav(path: Path, audio: np.ndarray, rate: int = FE.sample_rate, stereo: bool = False) -> Path:
    """16-bit PCM of 16 kHz `audio`, resampled to `rate`, the same in both channels when `stereo`."""
    from scipy.signal import resample_poly

    if rate != FE.sample_rate:
        g = math.gcd(rate, FE.sample_rate)
        audio = resample_poly(audio, rate // g, FE.sample_rate // g)
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    scipy.io.wavfile.write(path, rate, np.stack([pcm, pcm], axis=1) if stereo else pcm)
    return path


def detections(stdout: str) -> list[tuple[float, str, float]]:
    return [(float(m[1]), m[2], float(m[3])) for m in map(LINE.match, stdout.splitlines()) if m]


# --------------------------------------------------------------------------- pure parts


def test_streaming_features_equal_batch_front_end():
    """Every 1 s window of frames from audio pushed in random blocks is frontend.mfcc of its samples."""
    rng = np.random.default_rng(5)
    t = np.arange(4 * FE.sample_rate + 777) / FE.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) * (t % 1 < 0.5) + 0.01 * rng.standard_normal(len(t)))
    audio = audio.astype(np.float32)
    stream, pos, checked = listen.StreamingMfcc(FE), 0, 0
    while pos < len(audio):
        n = int(rng.integers(1, 2500))
        stream.push(audio[pos:pos + n])
        pos += n
        window = stream.window()
        if window is None:
            assert stream.frames_seen < FE.num_frames
            continue
        start = (stream.frames_seen - FE.num_frames) * FE.stride_samples
        batch = mfcc(audio[start:start + FE.clip_samples], FE)
        # float32 rounding: numpy's matrix products round differently with the number of rows
        assert np.abs(window - batch).max() <= 4 * np.finfo(np.float32).eps * np.abs(batch).max()
        checked += 1
    assert stream.frames_seen == 1 + (len(audio) - FE.window_samples) // FE.stride_samples
    assert checked > 30


@pytest.mark.parametrize(("line", "field"), [
    ("stride_ms = 30", "detector.stride_ms"),  # not a multiple of the 20 ms frame stride
    ("stride_ms = 0", "detector.stride_ms"),
    ("average_windows = 0", "detector.average_windows"),
    ("threshold = 1.5", "detector.threshold"),
    ('threshold = "high"', "detector.threshold"),
    ("refractory_ms = -1", "detector.refractory_ms"),
    ("sensitivity = 3", "detector.sensitivity"),
])
def test_bad_detector_value_names_file_and_field(tmp_path, line, field):
    key = line.split(" = ")[0]
    table = "\n".join(x for x in SHIPPED_DETECTOR.splitlines() if not x.startswith(key + " ")) + f"\n{line}\n"
    path = tmp_path / "kws.toml"
    path.write_text(_replace_table(SHIPPED_TOML, "[detector]", table))
    with pytest.raises(BuildError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and f"'{field}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_detector_table_is_optional_and_only_for_keyword_spotting(tmp_path):
    assert load_recipe(ROOT / "models" / "quality.toml").detector is None
    assert isinstance(RECIPE.detector, DetectorTuning) and RECIPE.detector.fixed == {}  # the build tunes all
    path = tmp_path / "quality.toml"
    path.write_text((ROOT / "models" / "quality.toml").read_text() + "\n" + SHIPPED_DETECTOR)
    with pytest.raises(BuildError, match=r"quality.toml: table '\[detector\]' is for keyword spotting"):
        load_recipe(path)


@pytest.mark.parametrize("average_windows", [1, 2, 3, 5])
def test_int8_threshold_is_the_same_decision_as_the_averaged_posterior(average_windows):
    """sum(q) >= threshold_q exactly when the averaged dequantized posterior reaches the threshold."""
    scale, zero_point = 1 / 256, -128  # TFLite's int8 softmax output
    for threshold in (0.5, 0.6, 0.7, 0.75, 0.9, 0.95, 1.0):
        s = DetectorSettings(stride_ms=20, average_windows=average_windows, threshold=threshold, refractory_ms=0)
        tq = listen.threshold_q(s, scale, zero_point)
        for total in range(-128 * average_windows, 127 * average_windows + 1):
            exact = Fraction(scale) * (Fraction(total, average_windows) - zero_point) >= Fraction(threshold)
            assert (total >= tq) == exact, (threshold, total)


def test_decider_averages_suppresses_and_does_not_depend_on_block_size():
    labels = RECIPE.labels
    yes, no = labels.index("yes"), labels.index("no")
    q = np.full((40, len(labels)), -128, np.int8)
    q[5:9, yes] = 127  # four windows of "yes"
    q[9, no] = 127  # one of "no": averaged over 3 windows, not enough
    q[20:30, no] = 127  # ten windows of "no": one detection, then the refractory period
    ends = FE.clip_samples + np.arange(40) * 1600  # every 100 ms
    s = DetectorSettings(stride_ms=100, average_windows=3, threshold=0.6, refractory_ms=1000)

    def run(pieces):
        d = listen.Decider(s, labels, 1 / 256, -128, FE.sample_rate)
        found = []
        for piece in pieces:
            found += d.step(q[piece], ends[piece])[0]
        return found

    whole = run([slice(0, 40)])
    assert [(d.word, d.time_s) for d in whole] == [("yes", 1.6), ("no", 3.1)]
    assert whole[0].score == pytest.approx((2 * 255 + 0) / 3 / 256, abs=1e-4)  # 2 of 3 windows at 255/256
    assert run([slice(i, i + 1) for i in range(40)]) == whole
    assert run([slice(0, 7), slice(7, 22), slice(22, 40)]) == whole


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def listen_project(tmp_path_factory):
    """A copy of the project with a small keyword model (ptq) built, and a fixed [detector]: (root, seconds)."""
    from npubuild.pipeline import build

    root = make_project(tmp_path_factory.mktemp("listen") / "project")
    shutil.copy(ROOT / "tasks.py", root / "tasks.py")
    toml = root / "models" / "kws.toml"
    text = _replace_table(toml.read_text(), "[profiles.smoke]", LISTEN_PROFILE)
    text = _replace_table(text, "[detector]", LISTEN_DETECTOR)
    text = re.sub(r'(?m)^labels = \[.*\]$', LISTEN_LABELS, text)
    toml.write_text(re.sub(r'(?m)^ship = ".*"$', 'ship = "ptq"', text))
    start = time.perf_counter()
    build(root, model="kws", target=TARGET, profile="smoke", log=lambda m: None)
    return root, time.perf_counter() - start


def built_detector(root: Path) -> DetectorSettings:
    """The detector settings the build's detector stage wrote (what kws_meta.h and listen use)."""
    return listen.tuned_settings(root / "build" / "smoke" / "kws" / "builtin" / "ptq" / "detector.json")


# Clear speech (middle rate, pitch and range) from voices of the test split, which training never heard:
# this test is about the streaming pipeline, not about how the model copes with hard voices (`tune`
# measures that on the validation voices).
CLEAR_VOICES = ("en+m7", "en-029+f4", "en-gb-scotland+edward", "en+iven")


def _unheard_clips(words: tuple[str, ...], seed: int) -> np.ndarray:
    """One clip per word, spoken clearly by test-split voices, each with a seed of its own."""
    test_voices = kws_data.split_voices(RECIPE.seed)["test"]
    assert set(CLEAR_VOICES) <= set(test_voices)
    rng = np.random.default_rng(seed)
    specs = [kws_data.ClipSpec(label=RECIPE.labels.index(word), word=word, voice=CLEAR_VOICES[i % len(CLEAR_VOICES)],
                               rate_wpm=125, pitch=50, pitch_range=50, seed=int(rng.integers(2**31)))
             for i, word in enumerate(words)]
    return kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1)


@pytest.mark.slow
def test_listen_reports_the_keywords_in_order_near_where_they_were_placed(listen_project, tmp_path):
    root, seconds = listen_project
    print(f"small kws model built in {seconds:.0f} s")
    clips = _unheard_clips(WORDS, seed=2024)
    rng = np.random.default_rng(11)
    noise = listen.noise_segments(rng, 1, 10.0, FE.sample_rate)[0]
    audio, placements = streams.compose(list(clips), [RECIPE.labels.index(w) for w in WORDS], noise, rng,
                                        FE.sample_rate, gaps_s=(2.0, 3.0), bed_db=(-50.0, -40.0))
    wav = write_wav(tmp_path / "words.wav", audio, rate=48000, stereo=True)  # read policy: mono, 16 kHz
    plot = tmp_path / "timeline.png"
    proc = invoke(root, "--wav", str(wav), "--plot", str(plot), "--profile", "smoke")
    assert proc.returncode == 0, proc.stderr
    found = detections(proc.stdout)
    assert [word for _, word, _ in found] == list(WORDS), proc.stdout
    d = built_detector(root)
    averaging_s = (d.average_windows - 1) * d.stride_ms / 1000
    for (t, _, score), p in zip(found, placements, strict=True):
        start, end = p.start / FE.sample_rate, (p.start + p.length) / FE.sample_rate
        # t is the end of a window that holds some of the clip: after the clip starts, and less than a
        # window (1 s) after it ends, plus the windows averaged before it
        assert start < t <= end + 1.0 + averaging_s + 1e-9, (t, start)
        assert d.threshold <= score <= 1.0
    png = plot.read_bytes()
    assert png.startswith(b"\x89PNG") and b"matplotlib" not in png  # no software version (deterministic)


@pytest.mark.slow
def test_listen_reports_nothing_on_a_minute_of_noise(listen_project, tmp_path):
    root, _ = listen_project
    rng = np.random.default_rng(12)
    noise = np.concatenate(listen.noise_segments(rng, 6, 10.0, FE.sample_rate, level_db=(-60.0, -25.0)))
    wav = write_wav(tmp_path / "noise.wav", noise)
    proc = invoke(root, "--wav", str(wav), "--profile", "smoke")
    assert proc.returncode == 0, proc.stderr
    assert detections(proc.stdout) == [], proc.stdout
    d = built_detector(root)
    frames = 1 + (len(noise) - FE.window_samples) // FE.stride_samples
    windows = 1 + (frames - FE.num_frames) // (d.stride_ms * FE.sample_rate // 1000 // FE.stride_samples)
    assert f"0 detection(s) in {windows} windows" in proc.stdout


@pytest.mark.slow
def test_meta_header_has_the_recipes_detector(listen_project, tmp_path):
    """The header's detector numbers, as a C compiler reads them, are the build's tuned ones and the host's."""
    root, _ = listen_project
    recipe = load_recipe(root / "models" / "kws.toml")
    folder = root / "firmware_assets" / TARGET / "kws"
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "kws_meta.h"\nint main(void) {\n'
                    '    printf("%d %d %.9g %d %d %.9g %d\\n", KWS_DETECT_STRIDE_MS, KWS_DETECT_AVERAGE_WINDOWS,\n'
                    '           (double)KWS_DETECT_THRESHOLD, KWS_DETECT_THRESHOLD_Q, KWS_DETECT_REFRACTORY_MS,\n'
                    '           (double)KWS_OUTPUT_SCALE, KWS_OUTPUT_ZERO_POINT);\n    return 0;\n}\n')
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is required"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main), "-o",
                           str(tmp_path / "main")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True).stdout.split()
    d = built_detector(root)
    assert vars(d) == recipe.detector.fixed  # fixed in the recipe: the tuning kept them
    assert [int(out[0]), int(out[1]), int(out[4])] == [d.stride_ms, d.average_windows, d.refractory_ms]
    assert float(out[2]) == pytest.approx(d.threshold, rel=1e-7)
    scale, zero_point = float(out[5]), int(out[6])
    # TFLite's int8 softmax: scale 1/256, zero point -128; the smallest sum of A outputs whose average
    # reaches T is ceil(A * (256 T - 128)) (3 windows and 0.9: 3 * 102.4 -> 308)
    assert (scale, zero_point) == (1 / 256, -128)
    assert int(out[3]) == math.ceil(d.average_windows * (Fraction(d.threshold) * 256 - 128))


def test_bad_wav_through_invoke_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "not audio.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    proc = invoke(ROOT, "--wav", str(bad))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not a readable WAV file" in lines[0], proc.stderr


def test_bad_option_and_missing_build_are_one_line(tmp_path):
    root = make_project(tmp_path / "project")
    shutil.copy(ROOT / "tasks.py", root / "tasks.py")
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(FE.sample_rate, np.float32))
    proc = invoke(root, "--wav", str(wav), "--stride-ms", "30")
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: --stride-ms must be a positive multiple of the front end's frame stride "
                                   "(20 ms), got 30")
    proc = invoke(root, "--wav", str(wav))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1
    assert "kws_int8.tflite: not found; run invoke build first" in lines[0]
    assert str(root / "build" / "default" / "kws" / "builtin") in lines[0]
