"""The MFCC front end against first principles: frame count, tones land in the right mel band."""

from __future__ import annotations

import numpy as np
import pytest

from npubuild.config import load_recipe
from npubuild.kinds.kws.frontend import LOG_FLOOR, _tables, mfcc, mfcc_batched, standardise

from .conftest import ROOT

FE = load_recipe(ROOT / "models" / "kws.toml").frontend


def test_shape_is_49_by_10():
    assert mfcc(np.zeros(16000), FE).shape == (49, 10)
    assert mfcc(np.zeros((3, 16000)), FE).shape == (3, 49, 10)


def test_wrong_clip_length_is_refused():
    with pytest.raises(ValueError, match="16000 samples"):
        mfcc(np.zeros(15999), FE)


def test_silence_is_the_log_floor():
    c0 = mfcc(np.zeros(16000), FE)[:, 0]
    # DCT-II (orthonormal) coefficient 0 of a constant vector v over 40 bins is v * sqrt(40)
    assert np.allclose(c0, np.log(LOG_FLOOR) * np.sqrt(FE.mel_bins), rtol=1e-5)


def test_mel_filters_are_ordered_nonempty_and_in_range():
    _, mel, _ = _tables(FE)
    peaks_hz = np.argmax(mel, axis=0) * FE.sample_rate / FE.fft_size
    assert (mel.sum(axis=0) > 0).all()
    assert (np.diff(peaks_hz) >= 0).all()
    assert FE.lower_hz <= peaks_hz[0] and peaks_hz[-1] <= FE.upper_hz


@pytest.mark.parametrize(("low", "high"), [(300.0, 1000.0), (1000.0, 3000.0)])
def test_higher_tone_moves_energy_to_higher_mel_bands(low, high):
    _, mel, _ = _tables(FE)
    t = np.arange(16000) / 16000

    def loudest_band(hz):
        frame = (0.5 * np.sin(2 * np.pi * hz * t[:FE.window_samples])) * _tables(FE)[0]
        return int(np.argmax((np.abs(np.fft.rfft(frame, FE.fft_size)) ** 2) @ mel))

    assert loudest_band(low) < loudest_band(high)
    assert not np.allclose(mfcc(np.sin(2 * np.pi * low * t), FE), mfcc(np.sin(2 * np.pi * high * t), FE))


def test_dct_is_orthonormal():
    dct = _tables(FE)[2]
    assert np.allclose(dct.T @ dct, np.eye(FE.num_mfcc), atol=1e-5)


def test_batched_equals_unbatched_and_standardise():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, (5, 16000)).astype(np.float32)
    assert np.array_equal(mfcc_batched(audio, FE, batch=2), mfcc(audio, FE))
    x = mfcc(audio, FE)
    z = standardise(x, x.mean(axis=(0, 1)), x.std(axis=(0, 1)))
    assert np.allclose(z.mean(axis=(0, 1)), 0, atol=1e-4) and np.allclose(z.std(axis=(0, 1)), 1, atol=1e-4)
