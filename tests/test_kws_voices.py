"""The keyword data's voice bank and augmentation: every engine speaks reproducibly, perturbations do
what they say (measured on tones), whole voices stay in one split, and each epoch sees other inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npubuild.errors import BuildError
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws import engines
from npubuild.kinds.kws.frontend import periodic_hann

from .test_kws_data import FE, RECIPE


def peak_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def tone(hz: float, seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


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


def test_vtlp_moves_frequencies_by_its_factor():
    for alpha in (0.85, 1.15):
        assert peak_hz(kws_data.vtlp(tone(1000.0), alpha, 16000)) == pytest.approx(1000 * alpha, abs=40)
    # above the boundary the warp runs back to Nyquist: a tone near 7 kHz moves less than alpha says
    high = peak_hz(kws_data.vtlp(tone(7000.0), 0.85, 16000))
    assert 0.85 * 7000 < high < 7000
    assert len(kws_data.vtlp(tone(1000.0), 1.1, 16000)) == 8000


def test_stft_frames_invert_and_agree_with_scipys_stft():
    """The STFT vtlp warps in: the inverse gives the signal back, and the spectra are scipy's `stft`
    (Hann, even extension at the ends) up to its scaling by the window's sum."""
    from scipy.signal import stft

    rng = np.random.default_rng(5)
    for n in (300, 512, 700, 12345, 16000):
        audio = rng.standard_normal(n)
        spectra, pad = kws_data.stft_frames(audio, 512, 128)
        assert np.max(np.abs(kws_data.istft_frames(spectra, 512, 128, pad, n) - audio)) < 1e-9
        if n >= 512:  # scipy shortens its window below that
            _, _, theirs = stft(audio, nperseg=512, noverlap=384, boundary="even")
            assert np.allclose(spectra.T / periodic_hann(512).sum(), theirs, atol=1e-9)


def test_vtlp_keeps_an_unwarped_signal_and_each_bins_phase():
    rng = np.random.default_rng(6)
    audio = rng.standard_normal(9000).astype(np.float32)
    # alpha a hair from 1: every output bin reads (almost exactly) its own input bin
    assert np.max(np.abs(kws_data.vtlp(audio, 1.0 + 1e-9, 16000) - audio)) < 1e-4
    warped = kws_data.vtlp(audio, 1.1, 16000)
    ours, pad = kws_data.stft_frames(warped, 512, 128)
    theirs, _ = kws_data.stft_frames(audio, 512, 128)
    strong = np.abs(theirs) > np.percentile(np.abs(theirs), 50)
    # a short-time spectrum's phases only roughly survive the overlap-add: most bins keep theirs
    angle = np.abs(np.angle(ours[strong] / theirs[strong]))
    assert np.median(angle) < 0.5


def test_speed_change_scales_pitch_and_length():
    fast = kws_data.change_speed(tone(1000.0), 1.25)
    assert len(fast) == pytest.approx(8000 / 1.25, abs=2)
    assert peak_hz(fast) == pytest.approx(1250, abs=40)


def test_resample_is_scipys_resample_poly_bit_for_bit():
    """The resampler with its filter made once per ratio gives scipy's samples exactly, for the speed
    changes' ratios, the engines' rates and a WAV's, in single and double precision, twice over (the
    cached filter is not changed by a call)."""
    from scipy.signal import resample_poly

    rng = np.random.default_rng(4)
    for up, down in [(10, 11), (91, 100), (320, 441), (16000, 22050), (2, 3), (16000, 16000), (1, 2), (100, 89)]:
        for dtype in (np.float32, np.float64):
            audio = rng.standard_normal(int(rng.integers(300, 9000))).astype(dtype)
            for _ in range(2):
                ours, theirs = kws_data.resample(audio, up, down), resample_poly(audio, up, down)
                assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), (up, down, dtype)


def test_the_microphone_band_pass_is_scipys_butterworth():
    """The closed-form band-pass the microphone and babble use is the filter scipy's `butter` designs:
    the same frequency response and the same filtered signal, to rounding, over the edges drawn."""
    from scipy.signal import butter, sosfilt, sosfreqz

    rng = np.random.default_rng(3)
    noise = rng.standard_normal(16000)
    for order, low, high in [(2, 200.0, 3500.0), (4, 20.0, 7800.0),
                             *((4, rng.uniform(20, 400), rng.uniform(3000, 7000)) for _ in range(20))]:
        ours, theirs = kws_data.bandpass_sos(order, low, high, 16000), butter(order, [low, high], "bandpass",
                                                                              fs=16000, output="sos")
        assert ours.shape == theirs.shape
        response = [sosfreqz(sos, 2048, fs=16000)[1] for sos in (ours, theirs)]
        assert np.max(np.abs(response[0] - response[1])) < 1e-8, (order, low, high)
        assert np.max(np.abs(sosfilt(ours, noise) - sosfilt(theirs, noise))) < 1e-8


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
