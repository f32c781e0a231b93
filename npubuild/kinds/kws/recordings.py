"""Keyword spotting on real recordings: a folder in the Speech Commands layout, dealt to splits by
speaker, its training clips rendered several times with augmentation, and, on request, mixed with the
built-in voice bank.

The folder: one folder per word (words that are not keywords are `_unknown_`), `_unknown_/` clips as
unknown words and `_silence_/` clips as silence (the released test set's layout), `_background_noise_/`
recordings, and optional `validation_list.txt` / `testing_list.txt`; clips they do not name are dealt
by a hash of the speaker id (`SplitRule`). Unknown words and silence are each about 10% of a split's
keyword clips (the Speech Commands recipe); silence is the split's `_silence_/` clips, topped up with
1 s pieces of the background recordings.

Training clips are rendered `train_variants` times (a profile field), one rendering per epoch like the
built-in data, each with its own draws (`render_recording`): a time shift of up to 100 ms, the speaker
perturbation of the voice bank at a smaller scale (vocal-tract length 0.9-1.1, speed 0.9-1.1), background
noise (the folder's recordings, volume up to 0.1, as Speech Commands trains; generated noise at 5-30 dB
SNR when the folder has none), and for a share of them what a recording chain does (`audio.recording_like`:
room, microphone, level, clipping). Validation and test clips are used as they are.

With the voice bank (`invoke build --data-dir DIR --voice-bank`, or `[mix] voice_bank = true`), the data
file also holds the built-in training split (every rendering), and every training epoch draws
`real_share` of its samples from the recordings (cycling through them) and the rest from the voice bank
(`MixedEpochs`); validation and test stay the recordings' own speakers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.errors import BuildError
from npubuild.kinds.kws.audio import (
    WavNotes,
    change_speed,
    fit_clip,
    make_noise,
    read_wav,
    recording_like,
    vtlp,
)

SPLITS = ("train", "val", "test")

# The Speech Commands recipe: silence and unknown each 10% of the keyword clips
# of a split; background noise mixed into training clips with probability 0.8
# at volume up to 0.1; training clips shifted by up to 100 ms.
SC_SILENCE_PERCENT = 10
SC_UNKNOWN_PERCENT = 10
SC_BACKGROUND_VOLUME = 0.1
SC_TIME_SHIFT_S = 0.1


# Without the folder's own lists, split as Speech Commands made them (`which_set` in TensorFlow's
# speech_commands/input_data.py): SHA-1 of the speaker id, the file name before `_nohash_`, modulo
# 2**27, as a percentage: 10% validation, 10% testing. One speaker's clips all land in one split,
# and a clip keeps its split when files are added. (TensorFlow hashes the whole file name when it has
# no `_nohash_`; here the stem, so `a.wav` and `a.flac` would agree: no clip of Speech Commands differs.)
SC_VALIDATION_PERCENT = 10
SC_TESTING_PERCENT = 10
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_NOHASH = "_nohash_"


def speaker_id(filename: str) -> str:
    """The part of a clip's file name before `_nohash_`; the whole stem when there is none."""
    name = Path(filename).name
    return name.partition(_NOHASH)[0] if _NOHASH in name else Path(name).stem


def hash_split(filename: str) -> str:
    """train, val or test for a clip, from a stable hash of its speaker id (Speech Commands' rule)."""
    import hashlib

    digest = int(hashlib.sha1(speaker_id(filename).encode()).hexdigest(), 16)
    percent = (digest % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)
    if percent < SC_VALIDATION_PERCENT:
        return "val"
    if percent < SC_VALIDATION_PERCENT + SC_TESTING_PERCENT:
        return "test"
    return "train"


@dataclass(frozen=True)
class SplitRule:
    """How a Speech Commands folder's clips are dealt to splits: its `validation_list.txt` and
    `testing_list.txt` (None when the file is missing), and the speaker hash for what they leave open."""

    val_list: frozenset[str] | None
    test_list: frozenset[str] | None

    @classmethod
    def for_folder(cls, data_dir: Path) -> SplitRule:
        def read(name: str) -> frozenset[str] | None:
            path = data_dir / name
            return frozenset(path.read_text().split()) if path.is_file() else None

        return cls(read("validation_list.txt"), read("testing_list.txt"))

    def split_of(self, rel: str) -> str:
        """The split of the clip at `rel` ("word/file.wav"). A split that has its list takes only the
        clips listed; the hash's share of it goes to training."""
        if self.val_list is not None and rel in self.val_list:
            return "val"
        if self.test_list is not None and rel in self.test_list:
            return "test"
        hashed = hash_split(rel)
        listed = {"val": self.val_list is not None, "test": self.test_list is not None}
        return "train" if hashed == "train" or listed[hashed] else hashed

    def note(self) -> str:
        """One line for the data stage's log when a list is missing ("" when both are there)."""
        if self.val_list is not None and self.test_list is not None:
            return ""
        if self.val_list is None and self.test_list is None:
            return (f"no validation_list.txt / testing_list.txt: split by a hash of the speaker id "
                    f"({SC_VALIDATION_PERCENT}% val, {SC_TESTING_PERCENT}% test)")
        missing, given, percent = (("testing_list.txt", "validation_list.txt", f"{SC_TESTING_PERCENT}% test")
                                   if self.test_list is None else
                                   ("validation_list.txt", "testing_list.txt", f"{SC_VALIDATION_PERCENT}% val"))
        return f"no {missing}: {given} as given, the other clips split by a hash of the speaker id ({percent})"


@dataclass
class Recordings:
    """A folder's clips per split (audio (N, clip_samples), labels), and its background recordings."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    noise: list[np.ndarray]


def speech_commands_dataset(recipe: Recipe, data_dir: Path, notes: WavNotes | None = None) -> Recordings:
    """Read a Speech Commands-layout folder (the module's docstring says what counts as what), every
    clip as recorded (1 s: shorter ones zero-padded, longer ones cut to their loudest second)."""
    if not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")
    fe = recipe.frontend
    rng = np.random.default_rng([recipe.seed, 3])
    rule = SplitRule.for_folder(data_dir)
    if notes is not None:
        notes.split_rule = rule.note()
    for keyword in recipe.keywords:
        folder = data_dir / keyword
        if not folder.is_dir() or not any(folder.glob("*.wav")):
            raise BuildError(f"{folder}: no .wav clips for keyword '{keyword}'")
    noise_files = sorted((data_dir / "_background_noise_").glob("*.wav"))
    noises = [n for n in (read_wav(p, fe.sample_rate) for p in noise_files) if len(n) >= fe.clip_samples]

    files: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    unknown: dict[str, list[Path]] = {s: [] for s in SPLITS}
    silence: dict[str, list[Path]] = {s: [] for s in SPLITS}
    unknown_label, silence_label = recipe.labels.index("_unknown_"), recipe.labels.index("_silence_")
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("_") and folder.name not in ("_unknown_", "_silence_"):
            continue
        for wav in sorted(folder.glob("*.wav")):
            split = rule.split_of(f"{folder.name}/{wav.name}")
            if folder.name in recipe.keywords:
                files[split].append((wav, recipe.labels.index(folder.name)))
            elif folder.name == "_silence_":
                silence[split].append(wav)
            else:
                unknown[split].append(wav)

    def load(path: Path) -> np.ndarray:
        audio = read_wav(path, fe.sample_rate, notes)
        if notes is not None:
            notes.count_length(len(audio), fe.clip_samples)
        return fit_clip(audio, fe.clip_samples)

    silence_audio = {s: [load(p) for p in silence[s]] for s in SPLITS}
    pool = noises + silence_audio["train"]  # background for training augmentation and silence pieces

    def noise_crop(volume: float) -> np.ndarray:
        if not pool:
            return np.zeros(fe.clip_samples, np.float32)
        noise = pool[rng.integers(len(pool))]
        start = rng.integers(0, len(noise) - fe.clip_samples + 1)
        return noise[start:start + fe.clip_samples] * volume

    data = {}
    for split in SPLITS:
        n_kw = len(files[split])
        n_unknown = min(len(unknown[split]), math.ceil(n_kw * SC_UNKNOWN_PERCENT / 100))
        picks = [unknown[split][i] for i in sorted(rng.permutation(len(unknown[split]))[:n_unknown])]
        entries = files[split] + [(p, unknown_label) for p in picks]
        clips = [load(path) for path, _ in entries]
        labels = [label for _, label in entries]
        clips += silence_audio[split]
        labels += [silence_label] * len(silence_audio[split])
        for _ in range(max(0, math.ceil(n_kw * SC_SILENCE_PERCENT / 100) - len(silence_audio[split]))):
            clips.append(noise_crop(rng.uniform(0, 1.0)))
            labels.append(silence_label)
        if not clips:
            hint = ("check validation_list.txt / testing_list.txt" if not rule.note() else
                    "the speaker hash sent no speaker there: add validation_list.txt / testing_list.txt, or speakers")
            raise BuildError(f"{data_dir}: split '{split}' has no clips ({hint})")
        data[split] = (np.clip(np.stack(clips), -1, 1).astype(np.float32), np.array(labels, np.int32))
    return Recordings(data, pool)


# Augmentation of real training clips (`render_recording`): the speaker perturbation at a smaller scale
# than the voice bank's (real voices already differ; a large warp makes them unlike any person), and a
# share through the recording chain of the built-in data.
REAL_VTLP_RANGE = (0.9, 1.1)
REAL_SPEED_RANGE = (0.9, 1.1)
REAL_PERTURB_PROBABILITY = 0.5
REAL_RECORDING_SHARE = 0.3
REAL_SNR_DB = (5.0, 30.0)


def render_recording(rng: np.random.Generator, clip: np.ndarray, silence: bool, noise: list[np.ndarray],
                     sample_rate: int) -> np.ndarray:
    """One training rendering of a real clip (the module's docstring); silence clips get only a level
    and the background."""
    n = len(clip)
    x = clip.astype(np.float32)
    if not silence:
        if rng.random() < REAL_PERTURB_PROBABILITY:
            x = vtlp(x, float(rng.uniform(*REAL_VTLP_RANGE)), sample_rate)
        if rng.random() < REAL_PERTURB_PROBABILITY:
            x = change_speed(x, float(rng.uniform(*REAL_SPEED_RANGE)))
            x = fit_clip(x, n)
        limit = int(SC_TIME_SHIFT_S * sample_rate)
        shift = int(rng.integers(-limit, limit + 1))
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0
        elif shift < 0:
            x[shift:] = 0
    else:
        x = x * np.float32(10 ** (rng.uniform(-20.0, 6.0) / 20))
    if rng.random() < 0.8:
        if noise:
            source = noise[int(rng.integers(len(noise)))]
            start = int(rng.integers(0, len(source) - n + 1))
            x = x + source[start:start + n] * np.float32(rng.uniform(0, SC_BACKGROUND_VOLUME))
        else:
            rms = np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-6
            x = x + make_noise(rng, n, sample_rate) * np.float32(rms / 10 ** (rng.uniform(*REAL_SNR_DB) / 20))
    if not silence and rng.random() < REAL_RECORDING_SHARE:
        x = recording_like(rng, x, sample_rate)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


CHUNK = 400


def _render_chunk(args: tuple) -> np.ndarray:
    """MFCC features (variants, n, frames, num_mfcc) of the renderings of a chunk of clips."""
    from threadpoolctl import threadpool_limits

    from npubuild.kinds.kws.frontend import mfcc_batched

    threadpool_limits(1)
    clips, silence, seeds, noise, variants, fe = args
    out = np.empty((variants, len(clips), fe.num_frames, fe.num_mfcc), np.float32)
    for v in range(variants):
        audio = np.stack([render_recording(np.random.default_rng([int(seed), v]), clip, bool(quiet), noise,
                                           fe.sample_rate)
                          for clip, quiet, seed in zip(clips, silence, seeds, strict=True)])
        out[v] = mfcc_batched(audio, fe)
    return out


def render_training(recipe: Recipe, audio: np.ndarray, labels: np.ndarray, noise: list[np.ndarray], variants: int,
                    workers: int | None = None) -> np.ndarray:
    """MFCC features (variants, N, frames, num_mfcc) of `variants` renderings of every training clip, in
    chunks over worker processes; each clip's renderings are drawn from its own seed, so the result does
    not depend on the scheduling."""
    import multiprocessing

    fe = recipe.frontend
    silence = labels == recipe.labels.index("_silence_")
    seeds = np.random.default_rng([recipe.seed, 13]).integers(2**31, size=len(audio))
    chunks = [(audio[i:i + CHUNK], silence[i:i + CHUNK], seeds[i:i + CHUNK], noise, variants, fe)
              for i in range(0, len(audio), CHUNK)]
    if not chunks:
        return np.zeros((variants, 0, fe.num_frames, fe.num_mfcc), np.float32)
    workers = min(len(chunks), workers or os.cpu_count() or 1)
    if workers == 1:
        return np.concatenate([_render_chunk(c) for c in chunks], axis=1)
    from npubuild.workers import ignore_ctrl_c

    with multiprocessing.get_context("forkserver").Pool(workers, initializer=ignore_ctrl_c) as pool:
        return np.concatenate(pool.map(_render_chunk, chunks, chunksize=1), axis=1)


def background_noise(data_dir: Path, sample_rate: int, clip_samples: int, *,
                     with_test: bool = False) -> list[np.ndarray]:
    """A Speech Commands folder's own background noise: every `_background_noise_/` recording and the
    `_silence_/` clips (those of the test split only `with_test`: the detector's tuning leaves them
    out, a benchmark on the folder takes them), each at least `clip_samples` long, DC removed; empty
    when the folder has none."""
    rule = SplitRule.for_folder(data_dir)
    paths = sorted((data_dir / "_background_noise_").glob("*.wav"))
    paths += [p for p in sorted((data_dir / "_silence_").glob("*.wav"))
              if with_test or rule.split_of(f"_silence_/{p.name}") != "test"]
    noise = []
    for path in paths:
        audio = read_wav(path, sample_rate)
        if len(audio) >= clip_samples:
            noise.append((audio - audio.mean()).astype(np.float32))
    return noise


def validation_files(recipe: Recipe, data_dir: Path, per_keyword: int, unknown: int) -> list[tuple[Path, int]]:
    """(file, label) of up to `per_keyword` validation clips of each keyword and `unknown` of other words
    (spread over the other words) from a Speech Commands folder's validation split (`SplitRule`)."""
    rule = SplitRule.for_folder(data_dir)
    if rule.val_list is not None:
        val_list = sorted(rule.val_list)
    else:
        val_list = sorted(f"{p.parent.name}/{p.name}" for p in data_dir.glob("*/*.wav")
                          if not p.parent.name.startswith("_") and rule.split_of(f"{p.parent.name}/{p.name}") == "val")
    by_word: dict[str, list[Path]] = {}
    for rel in val_list:
        word = rel.split("/")[0]
        if (data_dir / rel).is_file() and not word.startswith("_"):
            by_word.setdefault(word, []).append(data_dir / rel)
    picked = []
    for keyword in recipe.keywords:
        picked += [(path, recipe.labels.index(keyword)) for path in by_word.get(keyword, [])[:per_keyword]]
    others = [w for w in sorted(by_word) if w not in recipe.keywords]
    unknown_label = recipe.labels.index("_unknown_")
    for i in range(unknown):
        if not others:
            break
        word = others[i % len(others)]
        if i // len(others) < len(by_word[word]):
            picked.append((by_word[word][i // len(others)], unknown_label))
    return picked


def fingerprint_dir(data_dir: Path) -> str:
    """A cheap identity of a data folder: every file's relative path, size and mtime."""
    from npubuild.stages import folder_fingerprint

    if not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")
    return folder_fingerprint(data_dir)


