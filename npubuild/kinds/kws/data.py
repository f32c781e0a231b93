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
from npubuild.kinds.kws.audio import (
    WavNotes,
    make_noise,
    perturb_voice,
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
    # from a server that imported the modules once: a spawned process would import them (scipy.signal
    # above all) again for every chunk.
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


def build_features(recipe: Recipe, profile: Profile, data_dir: Path | None, out: Path,
                   log: Callable[[str], None] = print, *, builtin: Path | None = None,
                   real_share: float = 0.5) -> None:
    """The data stage: clips -> MFCC features per split, with the training split's statistics.
    For a folder of recordings (`recordings`), says once what the read policy converted; with `builtin`
    (the built-in data stage's file), the voice bank's training split goes in too, `real_share` of each
    training epoch drawn from the recordings (`EpochInputs`)."""
    from npubuild.kinds.kws.frontend import mfcc_batched
    from npubuild.stages import atomic_output

    arrays = {}
    if data_dir:
        from npubuild.kinds.kws.recordings import render_training, speech_commands_dataset

        notes = WavNotes()
        recorded = speech_commands_dataset(recipe, data_dir, notes)
        log(f"  {data_dir}: {notes.summary(recipe.frontend.sample_rate)}")
        if notes.split_rule:
            log(f"  {data_dir}: {notes.split_rule}")
        audio, labels = recorded.splits["train"]
        variants = max(1, profile.train_variants)
        train = render_training(recipe, audio, labels, recorded.noise, variants)
        arrays["x_train"], arrays["y_train"] = train[0], labels
        if variants > 1:  # further renderings of the training clips, one per epoch
            arrays["x_train_variants"] = train[1:]
        for split in ("val", "test"):
            audio, labels = recorded.splits[split]
            arrays[f"x_{split}"], arrays[f"y_{split}"] = mfcc_batched(audio, recipe.frontend), labels
        # an epoch is at least what an epoch of the built-in data is: a small folder trains as long
        arrays["epoch_samples"] = np.int64(profile.train_per_class * len(recipe.labels))
        log(f"  {data_dir}: {len(arrays['y_train'])} training clips rendered {variants} times, "
            f"{len(arrays['y_val'])} validation and {len(arrays['y_test'])} test clips; an epoch is "
            f"{max(int(arrays['epoch_samples']), len(arrays['y_train']))} samples")
    else:
        for split, (features, labels, engines) in builtin_features(recipe, profile).items():
            arrays[f"x_{split}"] = features[0]
            if len(features) > 1:  # further renderings of the training clips, one per epoch
                arrays[f"x_{split}_variants"] = features[1:]
            arrays[f"y_{split}"] = labels
            arrays[f"e_{split}"] = engines
    mean = arrays["x_train"].mean(axis=(0, 1), dtype=np.float64)
    var = arrays["x_train"].var(axis=(0, 1), dtype=np.float64)
    if builtin is not None:
        with np.load(builtin) as bank:
            arrays["x_bank"], arrays["y_bank"] = bank["x_train"], bank["y_train"]
            if "x_train_variants" in bank.files:
                arrays["x_bank_variants"] = bank["x_train_variants"]
        arrays["real_share"] = np.float32(real_share)
        # the statistics of the training mixture: the recordings' and the bank's, weighted by their share
        bank_mean = arrays["x_bank"].mean(axis=(0, 1), dtype=np.float64)
        bank_var = arrays["x_bank"].var(axis=(0, 1), dtype=np.float64)
        mixed = real_share * mean + (1 - real_share) * bank_mean
        var = real_share * (var + mean**2) + (1 - real_share) * (bank_var + bank_mean**2) - mixed**2
        mean = mixed
        log(f"  voice bank: {len(arrays['y_bank'])} built-in training clips beside the recordings, "
            f"{real_share:.0%} of each epoch from the recordings")
    arrays["mean"] = mean.astype(np.float32)
    arrays["std"] = (np.sqrt(var) + 1e-6).astype(np.float32)
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
    `x_train` and `x_train_variants`), standardised, with fresh masks (`mask_features`).

    A folder of recordings stores how many samples an epoch is (`epoch_samples`: at least what an epoch
    of the built-in data is, so a small folder still trains as long); with the voice bank in the file
    (`x_bank`), `real_share` of them are recordings and the rest voice-bank clips. Such an epoch takes
    the recordings in shuffled passes (continued from epoch to epoch) and the bank's clips drawn without
    repeats, each source at its own rendering for the epoch; the call then returns (inputs, the row of
    the split each input is)."""

    def __init__(self, features: Path, rows: np.ndarray | None) -> None:
        from npubuild.kinds.kws.frontend import standardise

        with np.load(features) as d:
            renderings = [d["x_train"]]
            if "x_train_variants" in d.files:
                renderings += list(d["x_train_variants"])
            n_real = len(d["y_train"])
            self.bank, self.samples = None, None
            if "x_bank" in d.files:
                bank = [d["x_bank"], *(list(d["x_bank_variants"]) if "x_bank_variants" in d.files else [])]
                self.bank = [standardise(r, d["mean"], d["std"]) for r in bank]
            mixed = self.bank is not None or "epoch_samples" in d.files
            if mixed:
                self.share = float(d["real_share"]) if self.bank is not None else 1.0
                self.samples = epoch_samples(features, rows)
            self.renderings = [standardise(r if rows is None or mixed else r[rows], d["mean"], d["std"])
                               for r in renderings]
        if self.samples is not None:
            n_bank = len(self.bank[0]) if self.bank is not None else 0
            self.rows = np.arange(n_real + n_bank) if rows is None else np.asarray(rows)
            self.real_at = np.flatnonzero(self.rows < n_real)  # positions in `rows` of recordings
            self.bank_at = np.flatnonzero(self.rows >= n_real)
            self.n_real = n_real
            self._cycle: list[int] = []

    def __call__(self, epoch: int, rng: np.random.Generator):
        if self.samples is None:
            x = mask_features(rng, self.renderings[epoch % len(self.renderings)])
            return x.reshape(len(x), -1)
        n = self.samples
        k = int(round(self.share * n)) if len(self.bank_at) else n
        k = k if len(self.real_at) else 0
        while len(self._cycle) < k:  # recordings in shuffled passes, continued across epochs
            self._cycle += list(rng.permutation(self.real_at))
        real, self._cycle = np.array(self._cycle[:k], np.int64), self._cycle[k:]
        bank = rng.choice(self.bank_at, n - k, replace=n - k > len(self.bank_at)) if n > k else real[:0]
        parts = [self.renderings[epoch % len(self.renderings)][self.rows[real]]]
        if self.bank is not None:
            parts.append(self.bank[epoch % len(self.bank)][self.rows[bank] - self.n_real])
        x = mask_features(rng, np.concatenate(parts))
        return x.reshape(len(x), -1), np.concatenate([real, bank])


def epoch_samples(features: Path, rows: np.ndarray | None) -> int:
    """How many samples a training epoch is: the data file's `epoch_samples` (a folder of recordings),
    else as many as the training split has rows (`rows` when given)."""
    with np.load(features) as d:
        if rows is not None:
            return len(rows)
        n = len(d["y_train"]) + (len(d["y_bank"]) if "y_bank" in d.files else 0)
        return max(n, int(d["epoch_samples"])) if "epoch_samples" in d.files else n


def load_split(features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, flattened features and labels of one split, as the model takes them; with the voice
    bank in the file, the training split is the recordings followed by the bank's clips."""
    from npubuild.kinds.kws.frontend import standardise

    with np.load(features) as d:
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        if split == "train" and "x_bank" in d.files:
            x, y = np.concatenate([x, d["x_bank"]]), np.concatenate([y, d["y_bank"]])
        x = standardise(x, d["mean"], d["std"])
        return x.reshape(len(x), -1), y
