"""Streams of real recordings, and how the streaming detector does on them (`invoke bench --part real`).

`folder_streams` makes real-speech streams from a folder of recordings in the Speech Commands layout:
each speaker's keywords in a row where the folder has several of them, the rest mixed, with one of the
folder's other words after every few keywords. `stream_benchmark` runs the detector over them, composed
at the pace of commands (`streams.compose`), and over an hour of the folder's background noise alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.kinds.kws.streams import (
    PACED_GAPS_S,
    compose,
    cut_to_speech,
    match_detections,
    noise_bed,
    sum_counts,
)


@dataclass
class StreamSet:
    """Real-speech streams of a folder: each a list of (clip, label) to compose, and noise to lay them on
    and to run alone."""

    streams: list[list[tuple[np.ndarray, int]]]
    noise: list[np.ndarray]  # background recordings, each at least 1 s
    same_speaker_words: int  # keywords in streams of one speaker
    mixed_words: int  # keywords in streams of several speakers
    unknown_words: int


def folder_streams(recipe, data_dir: Path, *, words_per_stream: int = 6, unknown_every: int = 5,
                   seed: int = 0) -> StreamSet:
    """Streams of the keyword clips of a Speech Commands-layout folder: each speaker's keywords in
    streams of up to `words_per_stream` in a random order; speakers with a single keyword are pooled
    into mixed streams. One of the folder's other words (`_unknown_/` or non-keyword folders) after
    every `unknown_every` keywords. Noise: `_background_noise_/` files and `_silence_/` clips."""
    from npubuild.errors import BuildError
    from npubuild.kinds.kws.audio import fit_clip, read_wav
    from npubuild.kinds.kws.recordings import background_noise, speaker_id

    fe = recipe.frontend
    rng = np.random.default_rng(seed)
    if not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")

    def load(path: Path) -> np.ndarray:
        audio = read_wav(path, fe.sample_rate)
        return (audio - audio.mean()).astype(np.float32)

    by_speaker: dict[str, list[tuple[Path, int]]] = {}
    unknown: list[Path] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        wavs = sorted(folder.glob("*.wav"))
        if folder.name in recipe.keywords:
            for path in wavs:
                by_speaker.setdefault(speaker_id(path.name), []).append((path, recipe.labels.index(folder.name)))
        elif not folder.name.startswith("_") or folder.name == "_unknown_":
            unknown += wavs
    if not by_speaker:
        raise BuildError(f"{data_dir}: no keyword clips (one folder per keyword: {', '.join(recipe.keywords)})")
    noise = background_noise(data_dir, fe.sample_rate, fe.clip_samples, with_test=True)
    if not noise:
        raise BuildError(f"{data_dir}: no background noise (_background_noise_/ or _silence_/ clips of 1 s or more)")
    groups, pool = [], []
    for speaker in sorted(by_speaker):
        clips = by_speaker[speaker]
        if len(clips) < 2:
            pool += clips
            continue
        order = rng.permutation(len(clips))
        groups += [[clips[i] for i in order[k:k + words_per_stream]] for k in range(0, len(order), words_per_stream)]
    same = sum(len(g) for g in groups)
    order = rng.permutation(len(pool))
    groups += [[pool[i] for i in order[k:k + words_per_stream]] for k in range(0, len(order), words_per_stream)]
    unknown_label = recipe.labels.index("_unknown_")
    unknown_order = list(rng.permutation(len(unknown)))
    streams, used_unknown = [], 0
    for group in groups:
        stream = []
        for n, (path, label) in enumerate(group, start=1):
            stream.append((cut_to_speech(fit_clip(load(path), fe.clip_samples), fe.sample_rate), label))
            if unknown_order and n % unknown_every == 0:
                path = unknown[unknown_order.pop()]
                stream.append((cut_to_speech(fit_clip(load(path), fe.clip_samples), fe.sample_rate), unknown_label))
                used_unknown += 1
        streams.append(stream)
    return StreamSet(streams, noise, same, len(pool), used_unknown)


# --------------------------------------------------------------------------- the real-stream benchmark


def stream_benchmark(recipe, model, settings, stream_set: StreamSet, *, noise_seconds: float = 3600.0,
                     gaps_s: tuple[float, float] = PACED_GAPS_S, tolerance_s: float = 1.0, seed: int = 0,
                     log=None) -> dict:
    """Run the detector (`detector.Detector`: streaming front end, the INT8 model through the reference
    kernels, `settings`) over every stream of `stream_set` composed with gaps from `gaps_s` over its
    noise, and over `noise_seconds` of its noise alone; count as `match_detections` does."""
    from npubuild.kinds.kws.detector import Detector

    fe = recipe.frontend
    rng = np.random.default_rng(seed)
    rows, same_rows, seconds = [], [], 0.0
    speakers_left = stream_set.same_speaker_words
    for i, stream in enumerate(stream_set.streams):
        words, labels = [w for w, _ in stream], [label for _, label in stream]
        bed = noise_bed(stream_set.noise, 30.0, rng, fe.sample_rate)
        audio, placed = compose(words, labels, bed, rng, fe.sample_rate, gaps_s, bed_db=(-55.0, -35.0))
        detector = Detector(model, settings, fe)
        detector.push(audio)
        row = match_detections(detector.detections, placed, recipe.labels, fe.sample_rate, tolerance_s)
        rows.append(row)
        keywords = row["keywords"]
        if speakers_left > 0:  # streams of one speaker come first (`folder_streams`)
            same_rows.append(row)
            speakers_left -= keywords
        seconds += len(audio) / fe.sample_rate
        if log and (i + 1) % 50 == 0:
            log(f"  streams: {i + 1}/{len(stream_set.streams)}")
    false_alarms, done = 0, 0.0
    while done < noise_seconds:
        chunk = min(600.0, noise_seconds - done)
        detector = Detector(model, settings, fe)
        detector.push(noise_bed(stream_set.noise, chunk, rng, fe.sample_rate))
        false_alarms += len(detector.detections)
        done += chunk
    total, same = sum_counts(rows), sum_counts(same_rows)

    def rate(c: dict, key: str) -> float | None:
        return round(c.get(key, 0) / c["keywords"], 4) if c.get("keywords") else None

    delays = total.pop("delays_s", [])
    same.pop("delays_s", None)
    return {"settings": {k: getattr(settings, k) for k in ("stride_ms", "average_windows", "threshold",
                                                             "refractory_ms")},
            "streams": len(rows), "stream_seconds": round(seconds, 1), "gaps_s": list(gaps_s),
            **{k: v for k, v in total.items()},
            "detection_rate": rate(total, "detected"), "in_order_rate": rate(total, "in_order"),
            "same_speaker": {"keywords": same.get("keywords", 0), "in_order_rate": rate(same, "in_order")},
            "unknown_words": stream_set.unknown_words,
            "median_delay_s": round(float(np.median(delays)), 3) if delays else None,
            "noise_seconds": round(done, 1), "false_alarms": false_alarms,
            "false_alarms_per_hour": round(false_alarms / (done / 3600), 3) if done else None}
