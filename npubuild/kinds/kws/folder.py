"""`invoke evaluate` for keyword spotting: a folder in the Speech Commands layout, every file used or
counted as skipped with its reason. Policies for real recordings: stereo is averaged to mono, other
sample rates are resampled to 16 kHz, the DC offset (the clip's mean) is removed, clips shorter than
1 s are zero-padded and longer ones keep their loudest second; clipped recordings (more than 0.1% of
samples at full scale) are kept and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.errors import BuildError
from npubuild.kinds.base import Folder, problem_of
from npubuild.kinds.kws.audio import WavNotes, fit_clip, read_wav
from npubuild.kinds.kws.frontend import mfcc_batched, standardise

CLIPPED_SHARE = 0.001  # a clip is "clipped" when more of its samples than this are at full scale


SPLIT_LISTS = ("testing_list.txt", "validation_list.txt")


def _kws_files(recipe: Recipe, data_dir: Path, folder: Folder) -> tuple[list[tuple[Path, int]], list[Path], str]:
    """(clip, label) pairs of a Speech Commands-layout folder and its background-noise files; every
    other file under `data_dir` is counted in `folder.skipped` with its reason. With a
    `testing_list.txt`, the word folders' clips it does not name are skipped (another split);
    `_silence_/` and `_unknown_/` (the released test set's layout) are taken whole."""
    listed = data_dir / "testing_list.txt"
    wanted = set(listed.read_text().split()) if listed.is_file() else None
    unknown, silence = recipe.labels.index("_unknown_"), recipe.labels.index("_silence_")
    pairs, noise = [], []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(data_dir)
        name = rel.as_posix()
        if len(rel.parts) == 1:
            folder.skip("split list (read, not a clip)" if rel.name in SPLIT_LISTS else "not in a word folder", name)
            continue
        if len(rel.parts) > 2:
            folder.skip("in a subfolder of a word folder", name)
            continue
        if path.suffix.lower() != ".wav":
            folder.skip("not a .wav file", name)
            continue
        word = rel.parts[0]
        if word == "_background_noise_":
            noise.append(path)
        elif word in ("_silence_", "_unknown_"):
            pairs.append((path, silence if word == "_silence_" else unknown))
        elif word.startswith("_"):
            folder.skip(f"folder {word}/ is not a class (known: _silence_, _unknown_, _background_noise_, words)",
                        name)
        elif wanted is not None and name not in wanted:
            folder.skip("not named in testing_list.txt (another split)", name)
        else:
            pairs.append((path, recipe.labels.index(word) if word in recipe.keywords else unknown))
    selection = (f"the {len(wanted)} clips named in testing_list.txt" if wanted is not None
                 else "every clip in the word folders")
    return pairs, noise, (selection + "; _unknown_/ clips as unknown, _silence_/ clips and 1 s pieces of "
                          "_background_noise_/ as silence")


def read_kws_folder(recipe: Recipe, data_dir: Path, mean: np.ndarray, std: np.ndarray) -> Folder:

    fe = recipe.frontend
    folder = Folder(np.zeros(0), np.zeros(0))
    pairs, noise_files, folder.selection = _kws_files(recipe, data_dir, folder)
    notes = WavNotes()
    clips, labels = [], []
    dc = clipped = files_used = 0

    def load(path: Path) -> np.ndarray | None:
        nonlocal dc, clipped
        try:
            audio = read_wav(path, fe.sample_rate, notes)
        except BuildError as e:
            folder.skip(problem_of(e, path), path.relative_to(data_dir).as_posix())
            return None
        if not np.isfinite(audio).all():
            folder.skip("samples that are not finite numbers", path.relative_to(data_dir).as_posix())
            return None
        clipped += np.mean(np.abs(audio) >= 0.999) > CLIPPED_SHARE
        offset = float(audio.mean())
        dc += abs(offset) > 1e-3
        return audio - offset

    for path, label in pairs:
        audio = load(path)
        if audio is not None:
            notes.count_length(len(audio), fe.clip_samples)
            clips.append(fit_clip(audio, fe.clip_samples))
            labels.append(label)
            files_used += 1
    silence = recipe.labels.index("_silence_")
    pieces = 0
    for path in noise_files:
        audio = load(path)
        if audio is None:
            continue
        if len(audio) < fe.clip_samples:
            folder.skip("background noise shorter than 1 s", path.relative_to(data_dir).as_posix())
            continue
        files_used += 1
        for start in range(0, len(audio) - fe.clip_samples + 1, fe.clip_samples):
            clips.append(audio[start:start + fe.clip_samples])
            labels.append(silence)
            pieces += 1
    if not clips:
        raise BuildError(f"{data_dir}: no readable .wav clips in a Speech Commands layout "
                         f"(one folder per word)")
    folder.x = standardise(mfcc_batched(np.stack(clips).astype(np.float32), fe), mean, std).reshape(len(clips), -1)
    folder.y = np.array(labels, np.int64)
    folder.read = files_used
    folder.converted = {k: int(v) for k, v in {
        "stereo averaged to mono": notes.downmixed, "resampled to 16 kHz": sum(notes.resampled.values()),
        "DC offset removed": dc, "clipped (kept)": clipped, "shorter than 1 s, zero-padded": notes.padded,
        "longer than 1 s, loudest second kept": notes.trimmed, "1 s pieces of background noise": pieces}.items()}
    return folder


# --------------------------------------------------------------------------- image quality
