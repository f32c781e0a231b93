"""Streaming keyword detection on the host, as firmware runs it (`invoke listen`), and its tuning.

Audio arrives in blocks of any size. `StreamingMfcc` turns it into MFCC frames as soon as each frame's
samples are in, with `frontend.mfcc` itself (run on one window at a time: a front end whose clip is one
window), and keeps a ring of the last second of frames. The features of every 1 s window equal
`frontend.mfcc` of those samples to float32 rounding (numpy's matrix products round differently with
the number of rows; the batch front end itself differs by as much between overlapping clips).

`Detector` runs the shipped INT8 model every `stride_ms` on the standardised window, with LiteRT's
reference kernels (`int8_runner`: the bits TFLM and the NPU give), and decides the way
firmware can, in the int8 output domain: the averaged posterior of a keyword over the last
`average_windows` windows, scale * (mean(q) - zero_point), reaches `threshold` exactly when the sum of
its int8 outputs reaches `threshold_q(...)` (an integer; dequantization is affine, so averaging commutes
with it). The best keyword is reported when it passes (never `_silence_` or `_unknown_`); then nothing
for `refractory_ms`. A detection's time is the end of the window at which the averaged score first
reached the threshold, in seconds from the start of the audio (the moment firmware could act on it).
No decision is made before `average_windows` windows have been seen.

`tune` picks the detector settings: `run_streams` composes streams of keywords over background noise,
words 0.3-1.0 s apart in half of them and 2-3 s apart in the others (`streams`), and noise-only
streams, and runs the model once per 80 ms window of them (the expensive part);
`score_grid` applies every setting of a small grid to those outputs in numpy (a stride of k frames takes
every k-th window: the same windows the detector would run) and picks one (`SELECTION_RULE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from npubuild.config import (
    DETECTOR_FIELDS,
    DetectorSettings,
    DetectorTuning,
    FrontEnd,
    Profile,
    Recipe,
    detector_problem,
)
from npubuild.errors import BuildError
from npubuild.kinds.kws.frontend import mfcc, standardise
from npubuild.kinds.kws.streams import (
    APART_GAPS_S,
    PACED_GAPS_S,
    Placement,
    compose,
    cut_to_speech,
    match_detections,
    sum_counts,
)

MODEL_BATCH = 1024  # windows per model call (bounds the memory of a long recording)


@dataclass(frozen=True)
class Detection:
    word: str
    time_s: float  # end of the window at which the averaged score first reached the threshold
    score: float  # the averaged posterior then


# --------------------------------------------------------------------------- front end


class StreamingMfcc:
    """MFCC frames from audio pushed in blocks of any size; keeps the last `num_frames` frames."""

    def __init__(self, fe: FrontEnd) -> None:
        self.fe = fe
        self._one_window = replace(fe, clip_samples=fe.window_samples)  # frontend.mfcc of one frame
        self._pending = np.zeros(0, np.float32)  # samples from the start of the next frame on
        self.frames_seen = 0
        self.ring = np.zeros((0, fe.num_mfcc), np.float32)  # the last num_frames frames, oldest first

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The frames `samples` complete, (n, num_mfcc) float32, oldest first."""
        fe = self.fe
        buf = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        n = max(0, 1 + (len(buf) - fe.window_samples) // fe.stride_samples)
        if n:
            windows = np.lib.stride_tricks.sliding_window_view(buf, fe.window_samples)[::fe.stride_samples][:n]
            # One frame per call: a frame's numbers then do not depend on how the audio was cut into blocks.
            frames = np.stack([mfcc(w, self._one_window)[0] for w in windows])
        else:
            frames = np.zeros((0, fe.num_mfcc), np.float32)
        self._pending = buf[n * fe.stride_samples:]
        self.frames_seen += n
        self.ring = np.concatenate([self.ring, frames])[-fe.num_frames:]
        return frames

    def window(self) -> np.ndarray | None:
        """Features of the last second, (num_frames, num_mfcc), or None before a second is in."""
        return self.ring.copy() if len(self.ring) == self.fe.num_frames else None


# --------------------------------------------------------------------------- model and decision


class KwsModel:
    """The INT8 model with its input standardisation: window features -> int8 outputs."""

    def __init__(self, int8: Path, labels: Sequence[str], mean: np.ndarray, std: np.ndarray) -> None:
        from npubuild.tflite_file import io_tensors

        self.int8, self.labels = Path(int8), tuple(labels)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.input, outputs = io_tensors(self.int8)
        self.output = outputs[0]
        if len(outputs) != 1 or self.output.size != len(self.labels):
            raise BuildError(f"{self.int8}: expected one output of {len(self.labels)} classes")

    @classmethod
    def from_build(cls, int8: Path, features: Path, labels: Sequence[str]) -> KwsModel:
        """The model file and the standardisation statistics of its build (data/features.npz)."""
        with np.load(features) as d:
            return cls(int8, labels, d["mean"], d["std"])

    def outputs_q(self, windows: np.ndarray) -> np.ndarray:
        """int8 outputs (n, labels) for window features (n, num_frames, num_mfcc), as firmware feeds
        them: standardised, quantized with the input's scale and zero point, reference kernels."""
        from npubuild.int8_runner import quantize, run_quantized

        out = np.empty((len(windows), len(self.labels)), np.int8)
        for i in range(0, len(windows), MODEL_BATCH):
            x = standardise(windows[i:i + MODEL_BATCH], self.mean, self.std).reshape(-1, self.input.size)
            q = quantize(x, self.input.scale, self.input.zero_point)
            out[i:i + MODEL_BATCH] = run_quantized(self.int8, q)[0].reshape(len(q), -1)
        return out


def threshold_q(settings: DetectorSettings, scale: float, zero_point: int) -> int:
    """The smallest sum of a keyword's int8 outputs over `average_windows` windows whose averaged
    posterior reaches the threshold: mean(scale * (q - zp)) >= T  <=>  sum(q) >= A * (T / scale + zp).
    Exact (rational arithmetic on the float values); above A * 127 nothing can fire."""
    bound = settings.average_windows * (Fraction(settings.threshold) / Fraction(scale) + zero_point)
    return math.ceil(bound)


class Decider:
    """Averaging, threshold and refractory period over the int8 outputs of consecutive windows."""

    def __init__(self, settings: DetectorSettings, labels: Sequence[str], scale: float, zero_point: int,
                 sample_rate: int) -> None:
        self.settings, self.scale, self.zero_point = settings, scale, zero_point
        self.columns = [i for i, label in enumerate(labels) if not label.startswith("_")]
        self.keywords = [labels[i] for i in self.columns]
        self.threshold_q = threshold_q(settings, scale, zero_point)
        self.refractory = settings.refractory_ms * sample_rate // 1000  # samples
        self.sample_rate = sample_rate
        self._history = np.zeros((0, len(self.columns)), np.int64)  # the previous average_windows - 1 rows
        self._seen = 0
        self._blocked_until = -1  # no detection at a window ending before this sample

    def step(self, q: np.ndarray, ends: np.ndarray) -> tuple[list[Detection], np.ndarray]:
        """Detections among the next windows (int8 outputs `q` (n, labels), window ends in samples),
        and the averaged keyword posteriors of each (n, keywords; NaN before enough windows)."""
        a = self.settings.average_windows
        rows = np.concatenate([self._history, np.asarray(q)[:, self.columns].astype(np.int64)])
        csum = np.concatenate([np.zeros((1, rows.shape[1]), np.int64), np.cumsum(rows, axis=0)])
        pos = np.arange(len(self._history), len(rows))
        sums = csum[pos + 1] - csum[np.maximum(pos + 1 - a, 0)]
        ready = self._seen + np.arange(len(pos)) >= a - 1
        averaged = np.where(ready[:, None], self.scale * (sums / a - self.zero_point), np.nan)
        best = sums.argmax(axis=1)
        best_sum = sums[np.arange(len(pos)), best]
        detections = []
        for i in np.flatnonzero(ready & (best_sum >= self.threshold_q)):
            if ends[i] >= self._blocked_until:
                detections.append(Detection(self.keywords[best[i]], round(float(ends[i]) / self.sample_rate, 4),
                                            round(float(averaged[i, best[i]]), 4)))
                self._blocked_until = int(ends[i]) + self.refractory
        self._history = rows[max(len(rows) - (a - 1), 0):] if a > 1 else rows[:0]
        self._seen += len(pos)
        return detections, averaged


class Detector:
    """Streaming keyword detection: push audio blocks, get detections as the windows complete."""

    def __init__(self, model: KwsModel, settings: DetectorSettings, fe: FrontEnd) -> None:
        problem = detector_problem(settings, fe)
        if problem:
            raise BuildError(f"detector setting '{problem[0]}' {problem[1]}")
        self.model, self.settings, self.fe = model, settings, fe
        self.frontend = StreamingMfcc(fe)
        self.every = settings.stride_ms * fe.sample_rate // (1000 * fe.stride_samples)  # frames per model run
        self.decider = Decider(settings, model.labels, model.output.scale, model.output.zero_point, fe.sample_rate)
        self.detections: list[Detection] = []
        self._ends: list[np.ndarray] = []
        self._outputs: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def push(self, samples: np.ndarray) -> list[Detection]:
        """Feed audio (float in [-1, 1] at the front end's sample rate); the detections it completes."""
        fe = self.fe
        before, ring = self.frontend.frames_seen, self.frontend.ring
        frames = np.concatenate([ring, self.frontend.push(samples)])
        first = before - len(ring)  # index of frames[0] in the stream
        counts = np.arange(before + 1, self.frontend.frames_seen + 1)  # frames seen after each new frame
        due = counts[(counts >= fe.num_frames) & ((counts - fe.num_frames) % self.every == 0)]
        if not len(due):
            return []
        view = np.lib.stride_tricks.sliding_window_view(frames, fe.num_frames, axis=0)  # (m, mfcc, frames)
        windows = view[due - fe.num_frames - first].transpose(0, 2, 1)
        ends = (due - 1) * fe.stride_samples + fe.window_samples
        q = self.model.outputs_q(windows)
        found, averaged = self.decider.step(q, ends)
        self._ends.append(ends)
        self._outputs.append(q)
        self._scores.append(averaged)
        self.detections += found
        return found

    @property
    def times(self) -> np.ndarray:
        """End of every window the model ran on, seconds."""
        return np.concatenate(self._ends or [np.zeros(0, np.int64)]) / self.fe.sample_rate

    @property
    def outputs_q(self) -> np.ndarray:
        """The model's int8 outputs of every window, (windows, labels)."""
        return np.concatenate(self._outputs or [np.zeros((0, len(self.model.labels)), np.int8)])

    @property
    def scores(self) -> np.ndarray:
        """Averaged keyword posteriors of every window, (windows, keywords)."""
        return np.concatenate(self._scores or [np.zeros((0, len(self.decider.keywords)))])


# --------------------------------------------------------------------------- test streams and tuning


def noise_segments(rng: np.random.Generator, count: int, seconds: float, sample_rate: int,
                   level_db: tuple[float, float] = (-60.0, -20.0)) -> list[np.ndarray]:
    """Background noise (`audio.make_noise`: white, pink, brown or hum), each segment at an RMS level
    in dBFS drawn from `level_db`."""
    from npubuild.kinds.kws.audio import make_noise

    n = int(seconds * sample_rate)
    return [make_noise(rng, n, sample_rate) * np.float32(10 ** (rng.uniform(*level_db) / 20)) for _ in range(count)]


# Strides share an 80 ms base, so the model runs on every fourth 20 ms window only: the tuning's cost is
# the model (reference kernels, slow) on every window of the streams; 12.5 runs a second and slower is
# also what an NPU duty cycle wants. Refractory periods reach down to 250 ms: words said 0.3 s apart.
DEFAULT_GRID = {"stride_ms": (80, 160, 240), "average_windows": (1, 2, 3, 5, 8),
                "threshold": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95), "refractory_ms": (250, 500, 1000, 1500, 2000)}
# Gap ranges of the tuning streams, taken in turn: commands in a row, and words far apart (`streams`).
TUNING_GAPS_S = (PACED_GAPS_S, APART_GAPS_S)


@dataclass
class StreamOutputs:
    """The model's int8 outputs for every window (one per `TuningRuns.stride_ms`) of one test stream."""

    q: np.ndarray  # (windows, labels) int8
    ends: np.ndarray  # end of each window, in samples from the start of the stream
    placements: list[Placement]  # the words in it; empty for a noise-only stream
    seconds: float
    gaps_s: tuple[float, float] | None = None  # the range its gaps were drawn from (None: noise only)


@dataclass
class TuningRuns:
    """What `run_streams` measured (the expensive part of tuning), for `score_grid` to score settings on."""

    model: str
    labels: tuple[str, ...]
    scale: float
    zero_point: int
    frontend: FrontEnd
    gaps_s: tuple[tuple[float, float], ...]
    seed: int
    keyword_streams: list[StreamOutputs]
    noise_streams: list[StreamOutputs]
    stride_ms: int  # the model ran every this many ms; a setting's stride is a multiple of it


def run_on_stream(model: KwsModel, fe: FrontEnd, audio: np.ndarray, stride_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's int8 outputs on every `stride_ms` window of `audio`, and each window's end (samples)."""
    detector = Detector(model, DetectorSettings(stride_ms=stride_ms, average_windows=1, threshold=1.0,
                                                refractory_ms=0), fe)
    detector.push(audio)
    return detector.outputs_q, np.round(detector.times * fe.sample_rate).astype(np.int64)


def run_streams(model: KwsModel, fe: FrontEnd, clips: np.ndarray, clip_labels: Sequence[int],
                noise: Sequence[np.ndarray], *, clips_per_stream: int = 20,
                gaps_s: Sequence[tuple[float, float]] = TUNING_GAPS_S, seed: int = 0, stride_ms: int | None = None,
                log: Callable[[str], None] | None = None) -> TuningRuns:
    """Compose the test streams and run the model on every window of them, one window per `stride_ms`
    (default: the frame stride; the grid's strides must be multiples of it).

    `clips` (N, samples) with their label indices in `model.labels` (keywords; `_unknown_` clips may be
    among them) are cut to their speech and shuffled into streams of `clips_per_stream` words, the
    streams' gaps drawn from the ranges of `gaps_s` in turn, over beds cut from `noise`
    (`streams.compose`); each `noise` array is also a noise-only stream."""
    rng = np.random.default_rng(seed)
    stride_ms = stride_ms or 1000 * fe.stride_samples // fe.sample_rate

    def run(audio: np.ndarray, placements: list[Placement], what: str, gaps=None) -> StreamOutputs:
        q, ends = run_on_stream(model, fe, audio, stride_ms)
        if log:
            log(f"{what}: {len(audio) / fe.sample_rate:.0f} s, {len(q)} windows")
        return StreamOutputs(q, ends, placements, len(audio) / fe.sample_rate, gaps)

    words = [cut_to_speech(clip, fe.sample_rate) for clip in clips]
    order = rng.permutation(len(clips))
    starts = range(0, len(order), clips_per_stream)
    keyword_streams = []
    for n, i in enumerate(starts):
        pick = order[i:i + clips_per_stream]
        gaps = tuple(gaps_s[n % len(gaps_s)])
        audio, placements = compose([words[j] for j in pick], [clip_labels[j] for j in pick], noise[n % len(noise)],
                                    rng, fe.sample_rate, gaps)
        keyword_streams.append(run(audio, placements, f"keyword stream {n + 1}/{len(starts)}", gaps))
    noise_streams = [run(segment, [], f"noise stream {n + 1}/{len(noise)}") for n, segment in enumerate(noise)]
    return TuningRuns(model.int8.name, model.labels, model.output.scale, model.output.zero_point, fe,
                      tuple(tuple(g) for g in gaps_s), seed, keyword_streams, noise_streams, stride_ms)


def _score_setting(runs: TuningRuns, settings: DetectorSettings, tolerance_s: float) -> dict:
    """Apply one setting to the outputs of every stream (a stride of k frames: every k-th window)."""
    fe, labels = runs.frontend, runs.labels
    every = settings.stride_ms // runs.stride_ms

    def detect(stream: StreamOutputs) -> list[Detection]:
        decider = Decider(settings, labels, runs.scale, runs.zero_point, fe.sample_rate)
        return decider.step(stream.q[::every], stream.ends[::every])[0]

    per_stream = [match_detections(detect(s), s.placements, labels, fe.sample_rate, tolerance_s)
                  for s in runs.keyword_streams]
    c = sum_counts(per_stream)
    paced = sum_counts([row for row, s in zip(per_stream, runs.keyword_streams, strict=True)
                        if s.gaps_s is not None and s.gaps_s[1] <= PACED_GAPS_S[1]])
    false_alarms = sum(len(detect(stream)) for stream in runs.noise_streams)
    hits, clips = c.get("detected", 0), c.get("keywords", 0)
    false_detections = c.get("wrong_word", 0) + c.get("on_unknown_words", 0) + c.get("repeats", 0) + c.get("stray", 0)
    wrong_total = false_detections + false_alarms
    delays = c.get("delays_s", [])
    return {**asdict(settings), "detection_rate": round(hits / clips, 4) if clips else 0.0, "detected": hits,
            "in_order": c.get("in_order", 0), "keyword_clips": clips, "wrong_word": c.get("wrong_word", 0),
            "on_unknown_words": c.get("on_unknown_words", 0), "repeats": c.get("repeats", 0),
            "stray_in_pauses": c.get("stray", 0), "false_detections": false_detections, "false_alarms": false_alarms,
            "paced_detection_rate": (round(paced["detected"] / paced["keywords"], 4) if paced.get("keywords")
                                     else None),
            "f1": round(2 * hits / (2 * hits + wrong_total + clips - hits), 4) if clips else 0.0,
            "median_delay_s": round(float(np.median(delays)), 3) if delays else None}


SELECTION_RULE = ("among settings with at most the false-alarm limit per hour on the noise-only streams (or the "
                  "fewest false alarms, when none is under the limit): the best F1, where true detections are "
                  "the keywords detected and false ones are every other detection (wrong words, detections on "
                  "unknown words, repeats of a detected keyword, detections between words or on noise); then the "
                  "best detection rate, the highest threshold, the longest stride (cheapest on the device), the "
                  "fewest windows averaged, the shortest refractory period")


def score_grid(runs: TuningRuns, *, grid: dict | None = None, tolerance_s: float = 1.0,
               false_alarm_limit: float = 1.0) -> dict:
    """Every setting of `grid` on `runs`, and the one to ship (`SELECTION_RULE`), as a JSON-able dict.

    A keyword counts as detected when its word is reported between the start of the word and
    `tolerance_s` after its end (`streams.match_detections`); other words reported there are wrong
    words. False alarms per hour are the detections on the noise-only streams per hour of them.
    `median_delay_s`: from the end of a keyword to its first correct detection."""
    grid = {**DEFAULT_GRID, **(grid or {})}
    fe = runs.frontend
    hours = sum(s.seconds for s in runs.noise_streams) / 3600
    results = []
    for stride in grid["stride_ms"]:
        for a in grid["average_windows"]:
            for t in grid["threshold"]:
                for r in grid["refractory_ms"]:
                    settings = DetectorSettings(stride_ms=int(stride), average_windows=int(a), threshold=float(t),
                                                refractory_ms=int(r))
                    problem = detector_problem(settings, fe)
                    if problem:
                        raise ValueError(f"grid: {problem[0]} {problem[1]}")
                    if settings.stride_ms % runs.stride_ms:
                        raise ValueError(f"grid: stride_ms {stride} is not a multiple of the {runs.stride_ms} ms "
                                         f"the model ran at")
                    row = _score_setting(runs, settings, tolerance_s)
                    row["false_alarms_per_hour"] = round(row["false_alarms"] / hours, 3) if hours else None
                    results.append(row)
    allowed = [r for r in results if hours and r["false_alarms_per_hour"] <= false_alarm_limit]
    if not allowed:
        fewest = min(r["false_alarms"] for r in results)
        allowed = [r for r in results if r["false_alarms"] == fewest]
    chosen = min(allowed, key=lambda r: (-r["f1"], -r["detection_rate"], -r["threshold"], -r["stride_ms"],
                                         r["average_windows"], r["refractory_ms"]))
    spoken = [p.label for s in runs.keyword_streams for p in s.placements]
    return {
        "model": runs.model, "grid": {k: list(v) for k, v in grid.items()}, "rule": SELECTION_RULE,
        "false_alarm_limit_per_hour": false_alarm_limit, "tolerance_s": tolerance_s,
        "gaps_s": [list(g) for g in runs.gaps_s], "seed": runs.seed,
        "keyword_clips": sum(not runs.labels[x].startswith("_") for x in spoken),
        "unknown_clips": sum(runs.labels[x].startswith("_") for x in spoken),
        "keyword_stream_seconds": round(sum(s.seconds for s in runs.keyword_streams), 1),
        "noise_seconds": round(hours * 3600, 1), "chosen": chosen, "results": results,
    }


def tune(model: KwsModel, fe: FrontEnd, clips: np.ndarray, clip_labels: Sequence[int], noise: Sequence[np.ndarray],
         *, grid: dict | None = None, false_alarm_limit: float = 1.0, tolerance_s: float = 1.0,
         clips_per_stream: int = 20, gaps_s: Sequence[tuple[float, float]] = TUNING_GAPS_S, seed: int = 0,
         log: Callable[[str], None] | None = None) -> dict:
    """The tuning sweep: `run_streams` (the model once per window of every stream, at the grid's
    common stride), then `score_grid` (every setting of the grid applied to those outputs in numpy)."""
    grid = {**DEFAULT_GRID, **(grid or {})}
    runs = run_streams(model, fe, clips, clip_labels, noise, clips_per_stream=clips_per_stream, gaps_s=gaps_s,
                       seed=seed, stride_ms=math.gcd(*(int(v) for v in grid["stride_ms"])), log=log)
    return score_grid(runs, grid=grid, tolerance_s=tolerance_s, false_alarm_limit=false_alarm_limit)


def tuning_grid(tuning: DetectorTuning | None) -> dict:
    """DEFAULT_GRID with the recipe's fixed settings in place of their rows."""
    return {**DEFAULT_GRID, **{name: (value,) for name, value in (tuning.fixed if tuning else {}).items()}}


def tuning_clips(recipe: Recipe, profile: Profile, data_dir: Path | None) -> tuple[np.ndarray, list[int], str]:
    """Validation speech for the tuning streams: `profile.detector_clips_per_keyword` clips of each keyword
    and `detector_unknown_clips` of other words, from the validation voices of the built-in data
    (`kws_data.plan_clips(..., "val")`) or the validation clips of a Speech Commands folder."""
    from npubuild.kinds.kws import data as kws_data
    from npubuild.kinds.kws.audio import fit_clip, read_wav

    fe = recipe.frontend
    per_keyword, unknown = profile.detector_clips_per_keyword, profile.detector_unknown_clips
    if data_dir is None:
        plan = kws_data.plan_clips(recipe, profile, "val")
        specs = []
        for label in [*recipe.keywords, "_unknown_"]:
            take = unknown if label == "_unknown_" else per_keyword
            specs += [s for s in plan if s.label == recipe.labels.index(label)][:take]
        return (kws_data.synthesise(specs, fe.sample_rate, fe.clip_samples), [s.label for s in specs],
                "validation voices of the built-in data")
    from npubuild.kinds.kws.recordings import validation_files

    files = validation_files(recipe, data_dir, per_keyword, unknown)
    audio = np.stack([fit_clip(read_wav(path, fe.sample_rate), fe.clip_samples)
                      for path, _ in files]) if files else np.zeros((0, fe.clip_samples), np.float32)
    return audio.astype(np.float32), [label for _, label in files], f"validation clips of {data_dir.name}"


def tuning_noise(recipe: Recipe, profile: Profile, data_dir: Path | None) -> tuple[list[np.ndarray], str]:
    """`profile.detector_noise_seconds` of noise in one-minute segments, and where it came from: a
    folder's own background noise where it has some (`recordings.background_noise`: real noise sets off
    a model that generated noise never does), else generated noise (`noise_segments`)."""
    fe = recipe.frontend
    rng = np.random.default_rng([recipe.seed, 7])
    minutes = max(1, round(profile.detector_noise_seconds / 60))
    seconds = profile.detector_noise_seconds / minutes
    if data_dir is not None:
        from npubuild.kinds.kws.recordings import background_noise
        from npubuild.kinds.kws.streams import noise_bed

        recorded = background_noise(data_dir, fe.sample_rate, fe.clip_samples)
        if recorded:
            return ([noise_bed(recorded, seconds, rng, fe.sample_rate, level_db=(-60.0, -20.0)) for _ in range(minutes)],
                    f"background noise of {data_dir.name} ({len(recorded)} recordings)")
    return noise_segments(rng, minutes, seconds, fe.sample_rate), "generated noise"


def tune_detector(recipe: Recipe, profile: Profile, int8: Path, features: Path, data_dir: Path | None, out: Path,
                  log: Callable[[str], None] | None = None) -> dict:
    """The build's detector stage: tune on validation speech in streams and on noise alone, write `out`
    (every setting scored, and the chosen one with the recipe's fixed settings kept)."""
    from npubuild.stages import write_json

    fe = recipe.frontend
    clips, labels, source = tuning_clips(recipe, profile, data_dir)
    if not len(clips):
        raise BuildError(f"{data_dir or recipe.source}: no validation clips of the keywords to tune the detector on")
    noise, noise_from = tuning_noise(recipe, profile, data_dir)
    model = KwsModel.from_build(int8, features, recipe.labels)
    result = tune(model, fe, clips, labels, noise, grid=tuning_grid(recipe.detector),
                  false_alarm_limit=recipe.detector.false_alarm_limit_per_hour, seed=recipe.seed, log=log)
    result.update(clips_from=source, noise_from=noise_from, fixed=recipe.detector.fixed)
    write_json(out, result)
    c = result["chosen"]
    if log:
        log(f"  detector: every {c['stride_ms']} ms, average {c['average_windows']}, threshold {c['threshold']}, "
            f"refractory {c['refractory_ms']} ms: {c['detected']}/{c['keyword_clips']} keywords detected, "
            f"{c['false_detections']} false detections, {c['false_alarms']} false alarms in "
            f"{result['noise_seconds']:.0f} s of noise")
    return result


def tuned_settings(path: Path) -> DetectorSettings:
    """The settings the build's detector stage chose (`tune_detector`'s output)."""
    import json

    try:
        chosen = json.loads(path.read_text())["chosen"]
    except FileNotFoundError:
        raise BuildError(f"{path}: not found; run invoke build first") from None
    except (ValueError, KeyError) as e:
        raise BuildError(f"{path}: not a detector tuning result ({e})") from None
    return DetectorSettings(**{name: chosen[name] for name in DETECTOR_FIELDS})


def detector_json(paths, technique: str) -> Path:
    """Where the detector stage writes its result: beside the recipe's INT8 file."""
    return paths.recipe_dir(technique) / "detector.json"


def detector_stage(recipe: Recipe, profile: str, paths, technique: str, data_dir: Path | None,
                   log: Callable[[str], None] = print):
    """Tune the streaming detector on the shipped INT8 model (after evaluate, before assets)."""
    from npubuild.kinds.kws.engines import program_versions
    from npubuild.kinds.kws.recordings import fingerprint_dir
    from npubuild.stages import Stage

    prof = recipe.profile(profile)
    return Stage(
        name=f"detector {recipe.name} {technique}", version=1, inputs=(paths.int8(technique), paths.features),
        params={"tuning": vars(recipe.detector), "grid": {k: list(v) for k, v in tuning_grid(recipe.detector).items()},
                "clips_per_keyword": prof.detector_clips_per_keyword, "unknown_clips": prof.detector_unknown_clips,
                "noise_seconds": prof.detector_noise_seconds, "seed": recipe.seed, "labels": recipe.labels,
                "frontend": vars(recipe.frontend), "unknown_words": recipe.unknown_words,
                "source": "builtin" if data_dir is None else fingerprint_dir(data_dir),
                **({"engines": program_versions()} if data_dir is None else {})},
        outputs=(detector_json(paths, technique),), tools=("ai-edge-litert", "espeakng-loader"),
        action=lambda: tune_detector(recipe, prof, paths.int8(technique), paths.features, data_dir,
                                     detector_json(paths, technique), log),
        code=("kinds.kws.detector",),
    )
