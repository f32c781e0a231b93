"""Keyword streams at the pace people speak, and how a detector's output on them is scored.

A stream is words one after another over a bed of background noise. Each word is cut to its speech
(`speech_span`: the part of the clip within `SPAN_FLOOR_DB` of its loudest 10 ms, plus a margin), so a
gap is silence between words as a listener hears it, not the padding of a 1 s clip. Gaps are drawn
per stream from one of several ranges: people say commands 0.3-1.0 s apart as well as seconds apart,
and a detector tuned on long pauses only waits too long (its refractory period hides the next word).

`match_detections` scores detections against the words of a stream in time order: a word is detected
when its keyword is reported between the word's start and `tolerance_s` after its end, and each
detection is used once; when the windows of neighbouring words overlap, a detection goes to the
earliest word still open with the same keyword. A detection of another keyword in an open word's
window is a wrong word; on an unknown word's window, a detection on an unknown word; outside every
window, a stray detection. "In order" counts the detected keywords whose detection came after the
previous detected keyword's: what a command sequence needs.

Streams of real recordings, and the benchmark on them, are in `real_streams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A word's span: frames within this many dB of the clip's loudest 10 ms frame, plus SPAN_MARGIN_S
# on each side (onsets and releases are quieter than the vowel).
SPAN_FLOOR_DB = -30.0
SPAN_MARGIN_S = 0.05
# Gaps between words in tuning streams: the pace of a sequence of commands, and far apart.
PACED_GAPS_S = (0.3, 1.0)
APART_GAPS_S = (2.0, 3.0)


@dataclass(frozen=True)
class Placement:
    start: int  # sample where the word starts in the stream
    length: int  # samples of the word
    label: int


def speech_span(audio: np.ndarray, sample_rate: int, floor_db: float = SPAN_FLOOR_DB,
                margin_s: float = SPAN_MARGIN_S) -> tuple[int, int]:
    """(start, end) samples of the speech in a clip: the first to the last 10 ms frame whose RMS is
    within `floor_db` of the loudest frame's, widened by `margin_s`; the whole clip when it is silent."""
    hop = max(1, sample_rate // 100)
    n = len(audio) // hop
    if n == 0:
        return 0, len(audio)
    frames = np.asarray(audio[:n * hop], np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    if rms.max() <= 0:
        return 0, len(audio)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    margin = int(margin_s * sample_rate)
    return max(0, loud[0] * hop - margin), min(len(audio), (loud[-1] + 1) * hop + margin)


def cut_to_speech(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    start, end = speech_span(audio, sample_rate)
    return np.asarray(audio[start:end], np.float32)


def compose(words: Sequence[np.ndarray], labels: Sequence[int], bed: np.ndarray, rng: np.random.Generator,
            sample_rate: int, gaps_s: tuple[float, float], bed_db: tuple[float, float] = (-55.0, -35.0),
            lead_s: float = 1.0, tail_s: float = 2.0) -> tuple[np.ndarray, list[Placement]]:
    """Words one after another, the first after `lead_s`, each next after a gap drawn from `gaps_s`, and
    `tail_s` after the last (room for its detection), added to a bed cut from `bed` (tiled as needed,
    from a random offset) at an RMS level drawn from `bed_db` dBFS. Returns the audio and the words'
    places."""
    placements, cursor = [], int(lead_s * sample_rate)
    for i, (word, label) in enumerate(zip(words, labels, strict=True)):
        if i:
            cursor += int(rng.uniform(*gaps_s) * sample_rate)
        placements.append(Placement(cursor, len(word), int(label)))
        cursor += len(word)
    total = cursor + int(tail_s * sample_rate)
    offset = int(rng.integers(len(bed))) if len(bed) else 0
    audio = np.resize(np.roll(np.asarray(bed, np.float64), -offset), total) if len(bed) else np.zeros(total)
    audio *= 10 ** (rng.uniform(*bed_db) / 20) / (np.sqrt(np.mean(audio**2)) + 1e-12) if len(bed) else 1.0
    for p, word in zip(placements, words, strict=True):
        audio[p.start:p.start + p.length] += word
    return np.clip(audio, -1.0, 1.0).astype(np.float32), placements


def match_detections(detections: Sequence, placements: Sequence[Placement], labels: Sequence[str],
                     sample_rate: int, tolerance_s: float) -> dict:
    """Counts of one stream's detections (objects with `word` and `time_s`, in time order) against its
    words (the module's docstring says how each is counted)."""
    tolerance = int(tolerance_s * sample_rate)
    matched: dict[int, int] = {}  # placement index -> detection time (samples)
    counts = {"keywords": sum(not labels[p.label].startswith("_") for p in placements), "detected": 0,
              "in_order": 0, "wrong_word": 0, "on_unknown_words": 0, "repeats": 0, "stray": 0}
    delays = []
    for d in detections:
        t = int(round(d.time_s * sample_rate))
        open_ = [i for i, p in enumerate(placements) if p.start <= t <= p.start + p.length + tolerance]
        if not open_:
            counts["stray"] += 1
            continue
        same = [i for i in open_ if labels[placements[i].label] == d.word]
        fresh = [i for i in same if i not in matched]
        if fresh:
            matched[fresh[0]] = t
            p = placements[fresh[0]]
            delays.append((t - p.start - p.length) / sample_rate)
        elif same:
            counts["repeats"] += 1
        elif any(not labels[placements[i].label].startswith("_") for i in open_):
            counts["wrong_word"] += 1
        else:
            counts["on_unknown_words"] += 1
    counts["detected"] = len(matched)
    last = -1
    for i in sorted(matched):
        if matched[i] > last:
            counts["in_order"] += 1
            last = matched[i]
    counts["delays_s"] = delays
    return counts


def sum_counts(rows: Sequence[dict]) -> dict:
    """The counts of several streams added up (delays pooled)."""
    out: dict = {}
    for row in rows:
        for key, value in row.items():
            out[key] = out.get(key, [] if isinstance(value, list) else 0) + value
    return out


def noise_bed(noise: Sequence[np.ndarray], seconds: float, rng: np.random.Generator, sample_rate: int,
              level_db: tuple[float, float] = (-50.0, -20.0), piece_s: float = 10.0) -> np.ndarray:
    """`seconds` of background noise: pieces of `piece_s` cut from random places of the recordings in
    `noise` (tiled when shorter), each at an RMS level drawn from `level_db` dBFS."""
    pieces, n = [], int(piece_s * sample_rate)
    for _ in range(max(1, int(np.ceil(seconds / piece_s)))):
        source = np.asarray(noise[int(rng.integers(len(noise)))], np.float64)
        piece = np.resize(np.roll(source, -int(rng.integers(len(source)))), n)
        piece = piece - piece.mean()
        pieces.append(piece * 10 ** (rng.uniform(*level_db) / 20) / (np.sqrt(np.mean(piece**2)) + 1e-12))
    return np.clip(np.concatenate(pieces)[:int(seconds * sample_rate)], -1.0, 1.0).astype(np.float32)
