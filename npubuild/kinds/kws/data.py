"""Keyword-spotting data: the built-in synthetic dataset, or a Speech Commands v2 folder.

Both produce the same thing: 1 s clips of 16 kHz audio per split with integer
labels in the recipe's label order, turned into MFCC features by the front end.

Built-in dataset
----------------
A voice bank of three engines (`engines.py`): eSpeak NG (8 accents x its voice variants),
Flite (kal16, awb, rms, slt) and Festival (ked). Half of the speech clips of each split
(OTHER_SHARE) are spoken by the Flite/Festival voices, half by eSpeak NG. Each keyword and each
`_unknown_` word is synthesised with a voice, speed, pitch and pitch range drawn per clip, then
made into another speaker (`audio.perturb_voice`: vocal-tract length and speed), trimmed, resampled to
16 kHz, scaled to a random peak level, placed at a random offset in a 1 s clip, and mixed with
generated noise (white, pink, brown, mains hum) at a random SNR. `_silence_` clips are noise alone.
Whole voices are dealt to train/validation/test, so no split hears a voice another split was built
with (eSpeak NG variants 70/15/15 in every accent; Flite awb, rms and kal16 train, Festival ked
validation, Flite slt test).

Training clips are rendered `train_variants` times (a profile field): each rendering draws its own
speaker perturbation, placement, level, noise and, for half of them, a room, microphone and
clipping; training takes one rendering per epoch, with time and MFCC masks drawn afresh
(`EpochInputs`), so no epoch sees the same input twice.

Audio is synthesised in fixed chunks, each in a fresh process, because eSpeak NG
carries state from one utterance to the next: that makes the dataset a function
of the seed alone, whatever the scheduling.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.config import Profile, Recipe
from npubuild.errors import BuildError
from npubuild.kinds.kws.audio import (
    WavNotes,
    fit_clip,
    make_noise,
    perturb_voice,
    read_wav,
    recording_like,
    resample,
)

SPLITS = ("train", "val", "test")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Variants that make words unintelligible even to people are left out.
_EXCLUDED_VARIANTS = {"whisper", "whisperf", "Demonic", "croak", "UniRobot", "anikaRobot"}
SPLIT_SHARES = (0.7, 0.15, 0.15)
NOISE_PROBABILITY = 0.8
SNR_DB = (5.0, 30.0)
RATE_WPM = (80, 170)
CHUNK = 400
# The built-in data has a fourth split: the recording-like test set.
BUILTIN_SPLITS = (*SPLITS, "test_rec")
AUGMENT_SHARE = 0.5
# Share of each split's speech clips spoken by the voices of other engines than eSpeak NG.
OTHER_SHARE = 0.5
# Voices of the other engines (`engines.py`), dealt whole to splits.
OTHER_VOICES = {"train": ("flite:awb", "flite:rms", "flite:kal16"), "val": ("festival:ked",),
                "test": ("flite:slt",)}


def variant_names() -> list[str]:
    """The voice variants of the bundled eSpeak NG data ("" is the accent's own voice), in a fixed order."""
    import espeakng_loader

    variants_dir = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return ["", *sorted(p.name for p in variants_dir.iterdir() if p.name not in _EXCLUDED_VARIANTS)]


def voice_name(accent: str, variant: str) -> str:
    return accent if variant == "" else f"{accent}+{variant}"


def voice_names() -> list[str]:
    """Every voice of the bank: eSpeak NG accent x variant combinations, then the other engines' voices."""
    return [*(voice_name(accent, v) for accent in ACCENTS for v in variant_names()),
            *(v for split in SPLITS for v in OTHER_VOICES[split])]


def split_voices(seed: int) -> dict[str, list[str]]:
    """Whole eSpeak NG variants are dealt to train/val/test (70/15/15), each with every accent: a test
    voice is a variant training never heard in any accent. The other engines' voices go whole to
    the split OTHER_VOICES names."""
    variants = variant_names()
    order = np.random.default_rng([seed, 1]).permutation(len(variants))
    n_train = round(SPLIT_SHARES[0] * len(variants))
    n_val = round(SPLIT_SHARES[1] * len(variants))
    cut = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {split: [*sorted(voice_name(a, variants[i]) for i in idx for a in ACCENTS), *OTHER_VOICES[split]]
            for split, idx in cut.items()}


def engine_index(voice: str) -> int:
    """The engine of a voice as an index into `engines.ENGINES` (stored per clip as `e_<split>`)."""
    from npubuild.kinds.kws.engines import ENGINES, engine_of

    return ENGINES.index(engine_of(voice))


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one built-in clip."""

    label: int
    word: str  # "" for silence
    voice: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    seed: int
    recording: bool = False  # through `recording_like` (room, microphone, clipping, DC offset, noise)


def plan_clips(recipe: Recipe, profile: Profile, split: str) -> list[ClipSpec]:
    """The clips of one split. `test_rec` is the recording-like test set: the test split's
    voices (held out of training), every clip through `recording_like`. In `train`, a share
    AUGMENT_SHARE of the clips goes through it too (other draws of the same kinds)."""
    per_class = {"train": profile.train_per_class, "val": profile.val_per_class,
                 "test": profile.test_per_class, "test_rec": profile.test_per_class}[split]
    from npubuild.kinds.kws.engines import ESPEAK, engine_of

    voices = split_voices(recipe.seed)["test" if split == "test_rec" else split]
    espeak_voices = [v for v in voices if engine_of(v) == ESPEAK]
    other_voices = [v for v in voices if engine_of(v) != ESPEAK]
    rng = np.random.default_rng([recipe.seed, BUILTIN_SPLITS.index(split), 2])
    specs = []
    for label, name in enumerate(recipe.labels):
        for _ in range(per_class):
            if name == "_silence_":
                word = ""
            elif name == "_unknown_":
                word = recipe.unknown_words[rng.integers(len(recipe.unknown_words))]
            else:
                word = name
            pool = other_voices if other_voices and rng.random() < OTHER_SHARE else espeak_voices
            specs.append(ClipSpec(
                label=label, word=word, voice=pool[rng.integers(len(pool))],
                rate_wpm=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                pitch=int(rng.integers(15, 86)), pitch_range=int(rng.integers(10, 91)),
                seed=int(rng.integers(2**31)),
                recording=split == "test_rec" or (split == "train" and bool(rng.random() < AUGMENT_SHARE)),
            ))
    return specs


def _trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    if not len(audio):
        return audio
    loud = np.flatnonzero(np.abs(audio) > threshold * (np.abs(audio).max() + 1e-12))
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio[:0]


def render_clip(spec: ClipSpec, speech: np.ndarray, sample_rate: int, clip_samples: int) -> np.ndarray:
    """Place synthesised speech (already at `sample_rate`) in a noisy 1 s clip."""
    rng = np.random.default_rng(spec.seed)
    clip = np.zeros(clip_samples, np.float32)
    speech = _trim(perturb_voice(np.random.default_rng([spec.seed, 5]), speech, sample_rate))[:clip_samples]
    if len(speech):
        speech = speech / (np.abs(speech).max() + 1e-12) * 10 ** (rng.uniform(-20.0, -1.0) / 20)
        start = rng.integers(0, clip_samples - len(speech) + 1)
        clip[start:start + len(speech)] = speech
        if rng.random() < NOISE_PROBABILITY:
            speech_rms = np.sqrt(np.mean(speech**2))
            snr = rng.uniform(*SNR_DB)
            clip += make_noise(rng, clip_samples, sample_rate) * speech_rms / 10 ** (snr / 20)
    else:  # silence: background noise alone, from near-digital silence to loud
        clip += make_noise(rng, clip_samples, sample_rate) * 10 ** (rng.uniform(-70.0, -15.0) / 20)
    if spec.recording:
        clip = recording_like(np.random.default_rng([spec.seed, 7]), clip, sample_rate)
    return np.clip(clip, -1.0, 1.0)


def variant_seed(seed: int, variant: int) -> int:
    """The seed of a clip's `variant`-th rendering (the 0th is the clip's own)."""
    return seed if variant == 0 else int(np.random.default_rng([seed, variant, 11]).integers(2**31))


def _speech(engines, specs: list[ClipSpec], sample_rate: int) -> list[np.ndarray]:
    """Dry speech of each spec at `sample_rate` (empty for silence); Festival's in one process."""
    from npubuild.kinds.kws.engines import FESTIVAL, Say, engine_of

    def item(spec: ClipSpec) -> Say:
        return Say(spec.word, spec.voice, spec.rate_wpm, spec.pitch, spec.pitch_range, spec.seed)

    festival = [i for i, s in enumerate(specs) if s.word and engine_of(s.voice) == FESTIVAL]
    said = dict(zip(festival, engines.say_festival([item(specs[i]) for i in festival]), strict=True))
    out = []
    for i, spec in enumerate(specs):
        if not spec.word:
            out.append(np.zeros(0, np.float32))
            continue
        rate, raw = said[i] if i in said else engines.say(item(spec))
        g = math.gcd(sample_rate, rate)
        out.append(raw if rate == sample_rate else resample(raw, sample_rate // g, rate // g).astype(np.float32))
    return out


def _synthesise_chunk(args: tuple) -> np.ndarray:
    """Renderings of a chunk of clips: audio (variants, n, clip_samples), or MFCC features when `fe`
    is given (variants, n, frames, num_mfcc)."""
    from dataclasses import replace

    from threadpoolctl import threadpool_limits

    from npubuild.kinds.kws.engines import Engines

    # One BLAS thread per worker: the pool already runs a worker per core, and OpenBLAS threads
    # competing for busy cores spin (the MFCC's matrix products ran several times slower).
    threadpool_limits(1)
    specs, sample_rate, clip_samples, variants, fe = args
    engines = Engines()
    try:
        speech = _speech(engines, specs, sample_rate)
    finally:
        engines.close()
    audio = np.empty((variants, len(specs), clip_samples), np.float32)
    for i, spec in enumerate(specs):
        for v in range(variants):
            audio[v, i] = render_clip(replace(spec, seed=variant_seed(spec.seed, v)), speech[i], sample_rate,
                                      clip_samples)
    if fe is None:
        return audio
    from npubuild.kinds.kws.frontend import mfcc_batched

    return mfcc_batched(audio.reshape(-1, clip_samples), fe).reshape(variants, len(specs), fe.num_frames,
                                                                     fe.num_mfcc)


def _run_chunks(specs: list[ClipSpec], sample_rate: int, clip_samples: int, variants: int, fe,
                workers: int | None, what: str) -> np.ndarray:
    chunks = [(specs[i:i + CHUNK], sample_rate, clip_samples, variants, fe) for i in range(0, len(specs), CHUNK)]
    if not chunks:
        return np.zeros((variants, 0, *((clip_samples,) if fe is None else (fe.num_frames, fe.num_mfcc))),
                        np.float32)
    from npubuild.terminal import Progress

    workers = workers or min(len(chunks), os.cpu_count() or 1)
    # Every chunk in a fresh process (eSpeak NG keeps state from one utterance to the next), forked
    # from a server that imported the modules once: a spawned process paid about 1.5 s of imports
    # (scipy.signal alone 1.2 s) for each of the default profile's 50 chunks.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["npubuild.kinds.kws.data", "npubuild.kinds.kws.engines",
                                "npubuild.kinds.kws.frontend", "scipy.signal", "threadpoolctl"])
    progress = Progress(len(specs) * variants, what)
    parts = []
    from npubuild.workers import ignore_ctrl_c

    with ctx.Pool(workers, initializer=ignore_ctrl_c, maxtasksperchild=1) as pool:
        for part in pool.imap(_synthesise_chunk, chunks, chunksize=1):  # in order: the same array every time
            parts.append(part)
            progress.advance(part.shape[0] * part.shape[1])
    return np.concatenate(parts, axis=1)


def synthesise(specs: list[ClipSpec], sample_rate: int, clip_samples: int, workers: int | None = None) -> np.ndarray:
    """Audio (N, clip_samples) for `specs`, in chunks of CHUNK clips, each chunk in a fresh process."""
    return _run_chunks(specs, sample_rate, clip_samples, 1, None, workers, "clips synthesised")[0]


def builtin_features(recipe: Recipe, profile: Profile,
                     workers: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{split: (MFCC features (variants, N, frames, num_mfcc), labels (N,) int32, engine index (N,) int8,
    -1 for silence)}: `profile.train_variants` renderings of each training clip, one of the others."""
    fe = recipe.frontend
    data = {}
    for split in BUILTIN_SPLITS:
        plan = plan_clips(recipe, profile, split)
        variants = max(1, profile.train_variants) if split == "train" else 1
        features = _run_chunks(plan, fe.sample_rate, fe.clip_samples, variants, fe, workers,
                               f"{split} clips rendered")
        engines = np.array([engine_index(s.voice) if s.word else -1 for s in plan], np.int8)
        data[split] = (features, np.array([s.label for s in plan], np.int32), engines)
    return data


# --------------------------------------------------------------------------- Speech Commands v2

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


def speech_commands_dataset(recipe: Recipe, data_dir: Path,
                            notes: WavNotes | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a Speech Commands v2 folder: one folder per word, `_background_noise_/`,
    `validation_list.txt` and `testing_list.txt` (clips named in neither are training clips; without
    a list, by Speech Commands' speaker hash: `SplitRule`)."""
    if not data_dir.is_dir():
        raise BuildError(f"{data_dir}: data directory does not exist")
    fe = recipe.frontend
    rng = np.random.default_rng([recipe.seed, 3])
    rule = SplitRule.for_folder(data_dir)
    if notes is not None:
        notes.split_rule = rule.note()
    word_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for keyword in recipe.keywords:
        folder = data_dir / keyword
        if not folder.is_dir() or not any(folder.glob("*.wav")):
            raise BuildError(f"{folder}: no .wav clips for keyword '{keyword}'")
    noise_files = sorted((data_dir / "_background_noise_").glob("*.wav"))
    noises = [read_wav(p, fe.sample_rate) for p in noise_files]
    noises = [n for n in noises if len(n) >= fe.clip_samples]

    files: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    unknown: dict[str, list[Path]] = {s: [] for s in SPLITS}
    unknown_label, silence_label = recipe.labels.index("_unknown_"), recipe.labels.index("_silence_")
    for folder in word_dirs:
        for wav in sorted(folder.glob("*.wav")):
            rel = f"{folder.name}/{wav.name}"
            split = rule.split_of(rel)
            if folder.name in recipe.keywords:
                files[split].append((wav, recipe.labels.index(folder.name)))
            else:
                unknown[split].append(wav)

    def noise_crop(volume: float) -> np.ndarray:
        if not noises:
            return np.zeros(fe.clip_samples, np.float32)
        noise = noises[rng.integers(len(noises))]
        start = rng.integers(0, len(noise) - fe.clip_samples + 1)
        return noise[start:start + fe.clip_samples] * volume

    data = {}
    for split in SPLITS:
        n_kw = len(files[split])
        n_unknown = min(len(unknown[split]), math.ceil(n_kw * SC_UNKNOWN_PERCENT / 100))
        picks = [unknown[split][i] for i in sorted(rng.permutation(len(unknown[split]))[:n_unknown])]
        entries = files[split] + [(p, unknown_label) for p in picks]
        clips, labels = [], []
        for path, label in entries:
            audio = read_wav(path, fe.sample_rate, notes)
            if notes is not None:
                notes.count_length(len(audio), fe.clip_samples)
            audio = fit_clip(audio, fe.clip_samples)
            if split == "train":
                shift = int(rng.integers(-int(SC_TIME_SHIFT_S * fe.sample_rate), int(SC_TIME_SHIFT_S * fe.sample_rate) + 1))
                audio = np.roll(audio, shift)
                if shift > 0:
                    audio[:shift] = 0
                elif shift < 0:
                    audio[shift:] = 0
                if rng.random() < 0.8:
                    audio = audio + noise_crop(rng.uniform(0, SC_BACKGROUND_VOLUME))
            clips.append(np.clip(audio, -1, 1))
            labels.append(label)
        for _ in range(math.ceil(n_kw * SC_SILENCE_PERCENT / 100)):
            clips.append(np.clip(noise_crop(rng.uniform(0, 1.0)), -1, 1))
            labels.append(silence_label)
        if not clips:
            hint = ("check validation_list.txt / testing_list.txt" if not rule.note() else
                    "the speaker hash sent no speaker there: add validation_list.txt / testing_list.txt, or speakers")
            raise BuildError(f"{data_dir}: split '{split}' has no clips ({hint})")
        data[split] = (np.stack(clips).astype(np.float32), np.array(labels, np.int32))
    return data


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


def build_features(recipe: Recipe, profile: Profile, data_dir: Path | None, out: Path,
                   log: Callable[[str], None] = print) -> None:
    """The data stage: clips -> MFCC features per split, with the training split's statistics.
    For a folder of recordings, says once what the read policy converted."""
    from npubuild.kinds.kws.frontend import mfcc_batched
    from npubuild.stages import atomic_output

    arrays = {}
    if data_dir:
        notes = WavNotes()
        data = speech_commands_dataset(recipe, data_dir, notes)
        log(f"  {data_dir}: {notes.summary(recipe.frontend.sample_rate)}")
        if notes.split_rule:
            log(f"  {data_dir}: {notes.split_rule}")
        for split, (audio, labels) in data.items():
            arrays[f"x_{split}"] = mfcc_batched(audio, recipe.frontend)
            arrays[f"y_{split}"] = labels
    else:
        for split, (features, labels, engines) in builtin_features(recipe, profile).items():
            arrays[f"x_{split}"] = features[0]
            if len(features) > 1:  # further renderings of the training clips, one per epoch
                arrays[f"x_{split}_variants"] = features[1:]
            arrays[f"y_{split}"] = labels
            arrays[f"e_{split}"] = engines
    arrays["mean"] = arrays["x_train"].mean(axis=(0, 1)).astype(np.float32)
    arrays["std"] = (arrays["x_train"].std(axis=(0, 1)) + 1e-6).astype(np.float32)
    with atomic_output(out) as f:
        np.savez(f, **arrays)


# SpecAugment-style masks drawn per clip and epoch: one span of up to TIME_MASK_FRAMES frames and one of
# up to MFCC_MASK_COEFFS coefficients set to the training mean (0 once standardised).
TIME_MASK_FRAMES = 8
MFCC_MASK_COEFFS = 2


def mask_features(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """`x` (N, frames, coefficients) with a time span and a coefficient span of each clip zeroed."""
    n, frames, coeffs = x.shape
    t_width = rng.integers(0, TIME_MASK_FRAMES + 1, n)
    t_start = rng.integers(0, frames - t_width + 1)
    c_width = rng.integers(0, MFCC_MASK_COEFFS + 1, n)
    c_start = rng.integers(0, coeffs - c_width + 1)
    t = np.arange(frames)[None, :]
    c = np.arange(coeffs)[None, :]
    in_time = (t >= t_start[:, None]) & (t < (t_start + t_width)[:, None])
    in_coeff = (c >= c_start[:, None]) & (c < (c_start + c_width)[:, None])
    return np.where(in_time[:, :, None] | in_coeff[:, None, :], np.float32(0), x).astype(np.float32)


class EpochInputs:
    """The training split as each epoch sees it: rendering `epoch mod renderings` (the data stage's
    `x_train` and `x_train_variants`), standardised, with fresh masks (`mask_features`)."""

    def __init__(self, features: Path, rows: np.ndarray | None) -> None:
        from npubuild.kinds.kws.frontend import standardise

        with np.load(features) as d:
            renderings = [d["x_train"]]
            if "x_train_variants" in d.files:
                renderings += list(d["x_train_variants"])
            self.renderings = [standardise(r if rows is None else r[rows], d["mean"], d["std"]) for r in renderings]

    def __call__(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        x = mask_features(rng, self.renderings[epoch % len(self.renderings)])
        return x.reshape(len(x), -1)


def load_split(features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, flattened features and labels of one split, as the model takes them."""
    from npubuild.kinds.kws.frontend import standardise

    with np.load(features) as d:
        x = standardise(d[f"x_{split}"], d["mean"], d["std"])
        return x.reshape(len(x), -1), d[f"y_{split}"]
