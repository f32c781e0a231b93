"""MFCC front end: one implementation for training, evaluation and the numbers firmware gets.

Per frame: Hann window (periodic) -> |FFT|^2 -> triangular mel filters (HTK
mel scale) -> natural log (+1e-6) -> orthonormal DCT-II, first `num_mfcc`.
Features are then standardised per coefficient with the training split's mean
and standard deviation (exported to firmware beside the MFCC parameters).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from npubuild.config import FrontEnd

LOG_FLOOR = 1e-6


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def periodic_hann(n: int) -> np.ndarray:
    """The periodic Hann window of `n` samples (float64, read-only): the MFCC's frames and vtlp's STFT."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    window.flags.writeable = False
    return window


@lru_cache(maxsize=8)
def _tables(fe: FrontEnd) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    window = periodic_hann(fe.window_samples).astype(np.float32)
    bins = fe.fft_size // 2 + 1
    freqs = np.arange(bins) * fe.sample_rate / fe.fft_size
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fe.lower_hz), _hz_to_mel(fe.upper_hz), fe.mel_bins + 2))
    mel = np.zeros((bins, fe.mel_bins), np.float32)
    for m in range(fe.mel_bins):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        mel[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
    k = np.arange(fe.mel_bins)
    dct = np.cos(np.pi / fe.mel_bins * (k[:, None] + 0.5) * np.arange(fe.num_mfcc)[None, :])
    dct *= np.sqrt(2.0 / fe.mel_bins)
    dct[:, 0] /= np.sqrt(2.0)
    return window, mel, dct.astype(np.float32)


def mfcc(audio: np.ndarray, fe: FrontEnd) -> np.ndarray:
    """MFCCs of 1-second clips: (..., clip_samples) float in [-1, 1] -> (..., frames, num_mfcc) float32."""
    from scipy.fft import rfft  # pocketfft's C++ port: computes in single precision, faster than numpy's

    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] != fe.clip_samples:
        raise ValueError(f"expected {fe.clip_samples} samples per clip, got {audio.shape[-1]}")
    window, mel, dct = _tables(fe)
    starts = np.arange(fe.num_frames) * fe.stride_samples
    idx = starts[:, None] + np.arange(fe.window_samples)[None, :]
    frames = audio[..., idx] * window
    spectrum = rfft(frames, n=fe.fft_size, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    log_mel = np.log(power @ mel + LOG_FLOOR)
    return (log_mel @ dct).astype(np.float32)


def mfcc_batched(audio: np.ndarray, fe: FrontEnd, batch: int = 512) -> np.ndarray:
    """`mfcc` over many clips without holding every spectrum in memory at once."""
    out = np.empty(audio.shape[:-1] + (fe.num_frames, fe.num_mfcc), np.float32)
    for i in range(0, len(audio), batch):
        out[i:i + batch] = mfcc(audio[i:i + batch], fe)
    return out


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((features - mean) / std).astype(np.float32)
