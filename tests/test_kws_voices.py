"""The keyword data's voice bank and augmentation: every engine speaks reproducibly, whole voices stay
in one split, and each epoch sees other inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npubuild.errors import BuildError
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws import engines

from .test_kws_data import FE, RECIPE


@pytest.mark.parametrize("voice", ["flite:kal16", "flite:awb", "flite:rms", "flite:slt", "festival:ked"])
def test_every_voice_speaks_reproducibly(voice):
    """Flite and Festival voices (eSpeak NG carries state between utterances: test_kws_data covers it)."""
    bank = engines.Engines()
    try:
        item = engines.Say("seven", voice, 140, 50, 50, 7)
        rate, a = bank.say(item)
        _, b = bank.say(item)
        _, slow = bank.say(dataclasses.replace(item, rate_wpm=90))
    finally:
        bank.close()
    assert rate == 16000 and np.array_equal(a, b)
    assert 0.2 * rate < len(a) < 1.5 * rate and np.abs(a).max() > 0.05
    assert len(slow) > len(a)  # a slower speaking rate stretches the word


def test_festival_speaks_many_words_in_one_process_as_one_by_one():
    bank = engines.Engines()
    try:
        items = [engines.Say(w, "festival:ked", r, 50, 50, 0) for w, r in (("yes", 140), ("stop", 100))]
        together = bank.say_festival(items)
        alone = [bank.say(i) for i in items]
    finally:
        bank.close()
    assert all(np.array_equal(t[1], a[1]) for t, a in zip(together, alone, strict=True))


def test_a_missing_engine_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match=r"^flite: not found on PATH; .*apt-get install flite\)$"):
        engines.require(engines.FLITE)


def test_every_engine_speaks_in_every_split_and_voices_stay_whole():
    splits = kws_data.split_voices(RECIPE.seed)
    for split in kws_data.SPLITS:
        others = [v for v in splits[split] if engines.engine_of(v) != engines.ESPEAK]
        assert others == list(kws_data.OTHER_VOICES[split])
    profile = dataclasses.replace(RECIPE.profile("smoke"), train_per_class=60)
    specs = kws_data.plan_clips(RECIPE, profile, "train")
    speech = [s for s in specs if s.word]
    share = np.mean([engines.engine_of(s.voice) != engines.ESPEAK for s in speech])
    assert abs(share - kws_data.OTHER_SHARE) < 0.05
    assert {s.voice for s in speech} <= set(splits["train"])
    assert {engines.engine_of(s.voice) for s in specs if RECIPE.labels[s.label] == "_unknown_"} == {
        engines.ESPEAK, engines.FLITE}


def test_renderings_differ_and_each_is_reproducible():
    specs = [s for s in kws_data.plan_clips(RECIPE, RECIPE.profile("smoke"), "train") if s.word][:3]
    a = kws_data._run_chunks(specs, FE.sample_rate, FE.clip_samples, 3, None, 1, "renderings")
    b = kws_data._run_chunks(specs, FE.sample_rate, FE.clip_samples, 3, None, 1, "renderings")
    assert a.shape == (3, 3, FE.clip_samples) and np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    # the first rendering is the clip as `synthesise` makes it for the other splits
    assert np.array_equal(a[0], kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1))


def test_masks_zero_bounded_spans():
    x = np.ones((200, FE.num_frames, FE.num_mfcc), np.float32)
    masked = kws_data.mask_features(np.random.default_rng(0), x)
    zero = masked == 0
    frames = zero.all(axis=2).sum(axis=1)
    coeffs = zero.all(axis=1).sum(axis=1)
    assert frames.max() <= kws_data.TIME_MASK_FRAMES and coeffs.max() <= kws_data.MFCC_MASK_COEFFS
    assert frames.max() > 0 and coeffs.max() > 0 and (masked[~zero] == 1).all()


def test_each_epoch_sees_other_inputs(tmp_path):
    rng = np.random.default_rng(0)
    renderings = rng.standard_normal((3, 10, FE.num_frames, FE.num_mfcc)).astype(np.float32)
    path = tmp_path / "features.npz"
    np.savez(path, x_train=renderings[0], x_train_variants=renderings[1:], y_train=np.arange(10),
             mean=np.zeros(FE.num_mfcc, np.float32), std=np.ones(FE.num_mfcc, np.float32))
    draw = kws_data.EpochInputs(path, rows=None)
    epochs = [draw(e, np.random.default_rng([1, e])) for e in range(4)]
    assert all(x.shape == (10, FE.num_frames * FE.num_mfcc) for x in epochs)
    assert not np.array_equal(epochs[0], epochs[3])  # the same rendering, other masks
    unmasked = epochs[1].reshape(10, FE.num_frames, FE.num_mfcc) != 0
    assert np.array_equal(epochs[1].reshape(renderings[1].shape)[unmasked], renderings[1][unmasked])
    assert np.array_equal(draw(2, np.random.default_rng([1, 2])), epochs[2])
    rows = kws_data.EpochInputs(path, rows=np.array([2, 5]))(0, np.random.default_rng(0))
    assert rows.shape == (2, FE.num_frames * FE.num_mfcc)
