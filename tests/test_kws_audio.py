"""Keyword audio: perturbations do what they say (measured on tones), the fast STFT, resampler and
band-pass equal scipy's, and the WAV read policy (resample, downmix, pad/trim) and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from npubuild.errors import BuildError
from npubuild.kinds.kws import audio as kws_audio
from npubuild.kinds.kws.frontend import periodic_hann

from .test_kws_data import write_wav


def peak_hz(audio: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def tone(hz: float, seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_vtlp_moves_frequencies_by_its_factor():
    for alpha in (0.85, 1.15):
        assert peak_hz(kws_audio.vtlp(tone(1000.0), alpha, 16000)) == pytest.approx(1000 * alpha, abs=40)
    # above the boundary the warp runs back to Nyquist: a tone near 7 kHz moves less than alpha says
    high = peak_hz(kws_audio.vtlp(tone(7000.0), 0.85, 16000))
    assert 0.85 * 7000 < high < 7000
    assert len(kws_audio.vtlp(tone(1000.0), 1.1, 16000)) == 8000


def test_stft_frames_invert_and_agree_with_scipys_stft():
    """The STFT vtlp warps in: the inverse gives the signal back, and the spectra are scipy's `stft`
    (Hann, even extension at the ends) up to its scaling by the window's sum."""
    from scipy.signal import stft

    rng = np.random.default_rng(5)
    for n in (300, 512, 700, 12345, 16000):
        audio = rng.standard_normal(n)
        spectra, pad = kws_audio.stft_frames(audio, 512, 128)
        assert np.max(np.abs(kws_audio.istft_frames(spectra, 512, 128, pad, n) - audio)) < 1e-9
        if n >= 512:  # scipy shortens its window below that
            _, _, theirs = stft(audio, nperseg=512, noverlap=384, boundary="even")
            assert np.allclose(spectra.T / periodic_hann(512).sum(), theirs, atol=1e-9)


def test_vtlp_keeps_an_unwarped_signal_and_each_bins_phase():
    rng = np.random.default_rng(6)
    audio = rng.standard_normal(9000).astype(np.float32)
    # alpha a hair from 1: every output bin reads (almost exactly) its own input bin
    assert np.max(np.abs(kws_audio.vtlp(audio, 1.0 + 1e-9, 16000) - audio)) < 1e-4
    warped = kws_audio.vtlp(audio, 1.1, 16000)
    ours, pad = kws_audio.stft_frames(warped, 512, 128)
    theirs, _ = kws_audio.stft_frames(audio, 512, 128)
    strong = np.abs(theirs) > np.percentile(np.abs(theirs), 50)
    # a short-time spectrum's phases only roughly survive the overlap-add: most bins keep theirs
    angle = np.abs(np.angle(ours[strong] / theirs[strong]))
    assert np.median(angle) < 0.5


def test_speed_change_scales_pitch_and_length():
    fast = kws_audio.change_speed(tone(1000.0), 1.25)
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
                ours, theirs = kws_audio.resample(audio, up, down), resample_poly(audio, up, down)
                assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), (up, down, dtype)


def test_the_microphone_band_pass_is_scipys_butterworth():
    """The closed-form band-pass the microphone and babble use is the filter scipy's `butter` designs:
    the same frequency response and the same filtered signal, to rounding, over the edges drawn."""
    from scipy.signal import butter, sosfilt, sosfreqz

    rng = np.random.default_rng(3)
    noise = rng.standard_normal(16000)
    for order, low, high in [(2, 200.0, 3500.0), (4, 20.0, 7800.0),
                             *((4, rng.uniform(20, 400), rng.uniform(3000, 7000)) for _ in range(20))]:
        ours, theirs = kws_audio.bandpass_sos(order, low, high, 16000), butter(order, [low, high], "bandpass",
                                                                              fs=16000, output="sos")
        assert ours.shape == theirs.shape
        response = [sosfreqz(sos, 2048, fs=16000)[1] for sos in (ours, theirs)]
        assert np.max(np.abs(response[0] - response[1])) < 1e-8, (order, low, high)
        assert np.max(np.abs(sosfilt(ours, noise) - sosfilt(theirs, noise))) < 1e-8


def test_read_wav_resamples_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    write_wav(tmp_path / "s.wav", stereo, rate=44100, channels=2)
    audio = kws_audio.read_wav(tmp_path / "s.wav", 16000)
    assert audio.ndim == 1 and abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 1


def test_bad_wav_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav")
    with pytest.raises(BuildError) as err:
        kws_audio.read_wav(bad, 16000)
    assert str(err.value).startswith(f"{bad}: not a readable WAV file")


def test_fit_clip_pads_short_and_keeps_loudest_second_of_long():
    short = np.ones(11200, np.float32)
    assert np.array_equal(kws_audio.fit_clip(short, 16000)[:11200], short)
    assert not kws_audio.fit_clip(short, 16000)[11200:].any()
    long = np.zeros(24000, np.float32)
    long[20000:21000] = 1.0
    fitted = kws_audio.fit_clip(long, 16000)
    assert len(fitted) == 16000 and fitted.sum() == 1000.0
