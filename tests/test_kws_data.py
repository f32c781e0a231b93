"""Keyword data: eSpeak NG synthesis is reproducible, voices do not leak between splits, and a
Speech Commands folder is read and split (its errors included)."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from npubuild.config import load_recipe
from npubuild.errors import BuildError
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws import recordings

from .conftest import ROOT

RECIPE = load_recipe(ROOT / "models" / "kws.toml")
FE = RECIPE.frontend


def write_wav(path, audio, rate=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_voices_are_disjoint_between_splits():
    splits = kws_data.split_voices(RECIPE.seed)
    train, val, test = (set(splits[s]) for s in kws_data.SPLITS)
    assert train and val and test
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == len(kws_data.voice_names())


def test_plan_is_balanced_and_uses_split_voices():
    profile = RECIPE.profile("smoke")
    specs = kws_data.plan_clips(RECIPE, profile, "val")
    counts = np.bincount([s.label for s in specs], minlength=len(RECIPE.labels))
    assert (counts == profile.val_per_class).all()
    assert {s.voice for s in specs} <= set(kws_data.split_voices(RECIPE.seed)["val"])
    assert all(s.word == "" for s in specs if RECIPE.labels[s.label] == "_silence_")
    assert all(s.word in RECIPE.unknown_words for s in specs if RECIPE.labels[s.label] == "_unknown_")


def test_synthesis_is_reproducible_and_audible():
    specs = kws_data.plan_clips(RECIPE, RECIPE.profile("smoke"), "test")[4:12]  # silence and unknown/keyword clips
    a = kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1)
    b = kws_data.synthesise(specs[::-1], FE.sample_rate, FE.clip_samples, workers=1)[::-1]
    assert a.shape == (8, 16000) and np.abs(a).max() <= 1.0
    speech = [i for i, s in enumerate(specs) if s.word]
    assert speech and all(np.abs(a[i]).max() > 0.05 for i in speech)
    # each clip depends on its own spec, not on what was synthesised before it in the chunk
    # (chunks run in fresh processes, so the order within a chunk is fixed by the plan)
    assert np.array_equal(a[0], kws_data.synthesise(specs[:1], FE.sample_rate, FE.clip_samples, workers=1)[0])
    assert a.dtype == b.dtype


def test_breathy_voices_are_reproducible_across_processes():
    """eSpeak NG seeds its breath-noise generator from the clock; each utterance reseeds it from its spec."""
    import dataclasses

    spec = kws_data.plan_clips(RECIPE, RECIPE.profile("smoke"), "test")[20]
    specs = [dataclasses.replace(spec, word="seven", voice=v) for v in ("en-us+f3", "en-gb-scotland+Alicia")]
    a = kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1)
    b = kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1)
    assert np.array_equal(a, b)
    other = kws_data.synthesise([dataclasses.replace(specs[0], seed=specs[0].seed + 1)], FE.sample_rate,
                                FE.clip_samples, workers=1)
    assert not np.array_equal(a[0], other[0])


def test_speech_commands_layout(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "sc"
    for word in (*RECIPE.keywords, "bird"):
        for i in range(3):
            write_wav(root / word / f"{i:08x}_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000))
    write_wav(root / "_background_noise_" / "white.wav", rng.uniform(-0.5, 0.5, 48000))
    (root / "validation_list.txt").write_text("yes/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("\n".join(f"{w}/00000002_nohash_0.wav" for w in (*RECIPE.keywords, "bird")))
    data = recordings.speech_commands_dataset(RECIPE, root).splits
    x_test, y_test = data["test"]
    labels = [RECIPE.labels[i] for i in y_test]
    assert labels.count("_unknown_") == 1 and labels.count("_silence_") == 1  # 10% of 10 keyword clips each
    assert x_test.shape == (12, 16000)
    # no unknown word is in the validation list, so validation gets none
    assert [RECIPE.labels[i] for i in data["val"][1]] == ["yes", "_silence_"]
    # train: 2 clips per keyword (1 for "yes"), unknown and silence each ceil(10% of 19)
    assert len(data["train"][1]) == 19 + 2 + 2


def test_speech_commands_missing_keyword_folder(tmp_path):
    (tmp_path / "sc" / "yes").mkdir(parents=True)
    with pytest.raises(BuildError, match=r"sc/yes: no \.wav clips for keyword 'yes'"):
        recordings.speech_commands_dataset(RECIPE, tmp_path / "sc")


def test_missing_data_dir(tmp_path):
    with pytest.raises(BuildError, match="data directory does not exist"):
        recordings.speech_commands_dataset(RECIPE, tmp_path / "nope")


def speakers_folder(root, speakers, words, clips_per_speaker=2):
    """A team's own recordings: `<word>/<speaker>_nohash_<n>.wav`, no list files."""
    rng = np.random.default_rng(4)
    for word in words:
        for speaker in speakers:
            for n in range(clips_per_speaker):
                write_wav(root / word / f"{speaker}_nohash_{n}.wav", rng.uniform(-0.3, 0.3, 1600))
    return root


def speakers_by_split(per_split=2):
    """Speaker names the hash deals to each split (`per_split` of each), found by trying names."""
    found = {s: [] for s in kws_data.SPLITS}
    i = 0
    while any(len(v) < per_split for v in found.values()):
        name = f"spk{i:03d}"
        split = recordings.hash_split(f"{name}_nohash_0.wav")
        if len(found[split]) < per_split:
            found[split].append(name)
        i += 1
    return found


def test_hash_split_is_speech_commands_rule():
    import hashlib

    # which_set: SHA-1 of the speaker id modulo 2**27, as a percentage of 2**27 - 1; val < 10 <= test < 20
    for name in ("0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_3.wav", "c9b5ff26_nohash_1.wav", "me.wav"):
        speaker = name.split("/")[-1].split("_nohash_")[0].removesuffix(".wav")
        percent = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
        assert recordings.hash_split(name) == ("val" if percent < 10 else "test" if percent < 20 else "train")
    assert recordings.speaker_id("yes/abc_nohash_1.wav") == "abc" and recordings.speaker_id("kitchen-07.wav") == "kitchen-07"
    counts = [recordings.hash_split(f"{i:08x}_nohash_0.wav") for i in range(5000)]
    assert 400 < counts.count("val") < 600 and 400 < counts.count("test") < 600


def test_folder_without_lists_is_split_by_speaker_and_said_once(tmp_path):
    speakers = speakers_by_split()
    words = (*RECIPE.keywords, "bird")
    root = speakers_folder(tmp_path / "ours", sorted(sum(speakers.values(), [])), words)
    rule = recordings.SplitRule.for_folder(root)
    seen: dict[str, set[str]] = {}
    for wav in sorted(root.glob("*/*.wav")):
        seen.setdefault(recordings.speaker_id(wav.name), set()).add(rule.split_of(f"{wav.parent.name}/{wav.name}"))
    assert all(len(splits) == 1 for splits in seen.values())  # no speaker in two splits
    assert {s: sorted(k for k, v in seen.items() if v == {s}) for s in kws_data.SPLITS} == speakers
    # stable: the same splits from a fresh rule, after another speaker's clips were added
    speakers_folder(root, ["newcomer"], words)
    again = recordings.SplitRule.for_folder(root)
    assert all(again.split_of(f"yes/{spk}_nohash_0.wav") == s for s, names in speakers.items() for spk in names)

    lines = []
    out = tmp_path / "features.npz"
    kws_data.build_features(RECIPE, RECIPE.profile("smoke"), root, out, lines.append)
    notes = [line for line in lines if "hash of the speaker id" in line]
    assert notes == [f"  {root}: no validation_list.txt / testing_list.txt: split by a hash of the speaker id "
                     f"(10% val, 10% test)"]
    with np.load(out) as d:
        y_val = [RECIPE.labels[i] for i in d["y_val"]]
    # 2 val speakers x 2 clips of each of 10 keywords; unknown and silence each ceil(10% of 40)
    assert len(y_val) == 40 + 4 + 4 and y_val.count("_unknown_") == 4
    val_files = recordings.validation_files(RECIPE, root, per_keyword=1, unknown=1)
    assert {recordings.speaker_id(p.name) for p, _ in val_files} <= set(speakers["val"]) and len(val_files) == 11


def test_one_list_is_used_and_the_rest_hashed(tmp_path):
    speakers = speakers_by_split()
    root = speakers_folder(tmp_path / "ours", sorted(sum(speakers.values(), [])), RECIPE.keywords)
    listed = f"yes/{speakers['train'][0]}_nohash_0.wav"
    (root / "validation_list.txt").write_text(listed + "\n")
    rule = recordings.SplitRule.for_folder(root)
    splits = {f"{w.parent.name}/{w.name}": rule.split_of(f"{w.parent.name}/{w.name}") for w in root.glob("*/*.wav")}
    assert [rel for rel, s in splits.items() if s == "val"] == [listed]  # only the listed clip validates
    assert {recordings.speaker_id(rel) for rel, s in splits.items() if s == "test"} == set(speakers["test"])
    assert splits[f"no/{speakers['val'][0]}_nohash_1.wav"] == "train"  # the hash's val share trains
    assert rule.note() == ("no testing_list.txt: validation_list.txt as given, the other clips split by a hash "
                           "of the speaker id (10% test)")
    (root / "testing_list.txt").write_text("")
    assert recordings.SplitRule.for_folder(root).note() == ""  # both lists given: as before, nothing said
