"""Audio for keyword spotting: generated noise, the STFT and its inverse, vocal-tract-length and speed
perturbation, resampling, simulated rooms and microphones, and reading WAV files under the project's
policy (mono, the front end's rate, clips of the front end's length)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.kinds.kws.frontend import periodic_hann


def make_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS background noise of a random colour, sometimes with mains hum."""
    kind = rng.integers(4)
    white = rng.standard_normal(n)
    if kind == 0:
        noise = white
    elif kind in (1, 2):  # pink (1/f) or brown (1/f^2) by shaping the spectrum
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        spectrum /= f ** (0.5 if kind == 1 else 1.0)
        noise = np.fft.irfft(spectrum, n)
    else:  # hum: mains fundamental and harmonics over a little white noise
        t = np.arange(n) / sample_rate
        mains = 50.0 if rng.random() < 0.5 else 60.0
        noise = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi))
                    for h in range(1, 6)) + 0.05 * white
    noise = noise - noise.mean()
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def stft_frames(audio: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, int]:
    """Hann-windowed frames' spectra (frames, n_fft // 2 + 1) of `audio` extended by a mirror image of
    half a window at each end (so the first and last samples sit mid-frame), and that extension."""
    pad = n_fft // 2
    padded = np.pad(audio.astype(np.float64), pad, mode="reflect")
    frames = 1 + -(-(len(padded) - n_fft) // hop)
    padded = np.pad(padded, (0, (frames - 1) * hop + n_fft - len(padded)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(windows * periodic_hann(n_fft), axis=-1), pad


@lru_cache(maxsize=256)
def _overlap_norm(n_fft: int, hop: int, count: int) -> np.ndarray:
    """The summed squared window at every sample of `count` overlapped frames."""
    squared = periodic_hann(n_fft) ** 2
    norm = np.zeros((count - 1) * hop + n_fft)
    for k in range(count):
        norm[k * hop:k * hop + n_fft] += squared
    return np.maximum(norm, 1e-10)


def istft_frames(spectra: np.ndarray, n_fft: int, hop: int, pad: int, length: int) -> np.ndarray:
    """The signal whose `stft_frames` are `spectra`: windowed overlap-add divided by the summed
    squared window (the least-squares inverse), with the extension cut off."""
    frames = np.fft.irfft(spectra, n_fft, axis=-1) * periodic_hann(n_fft)
    count, overlaps = len(frames), n_fft // hop  # hop divides n_fft
    out = np.zeros((count - 1) * hop + n_fft)
    blocks = frames.reshape(count, overlaps, hop)
    for k in range(overlaps):
        out[k * hop:k * hop + count * hop] += blocks[:, k].reshape(-1)
    return (out / _overlap_norm(n_fft, hop, count))[pad:pad + length]


def vtlp(audio: np.ndarray, alpha: float, sample_rate: int, boundary_hz: float = 4800.0) -> np.ndarray:
    """Vocal-tract-length perturbation: the short-time spectrum warped along frequency by `alpha`
    (Jaitly & Hinton's piecewise-linear warp: f -> alpha*f up to a boundary, then a straight line to
    Nyquist), so formants move as in a longer (alpha < 1) or shorter (alpha > 1) vocal tract. Magnitudes
    are warped, each bin keeps its phase; the length is kept."""
    if len(audio) < 64 or alpha == 1.0:
        return audio
    n_fft, hop = 512, 128
    z, pad = stft_frames(audio, n_fft, hop)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    nyquist = sample_rate / 2
    knee = boundary_hz * min(alpha, 1.0) / alpha
    # Source frequency of every output bin: the inverse of the warp.
    out_knee = alpha * knee
    src = np.where(freqs <= out_knee, freqs / alpha,
                   knee + (freqs - out_knee) * (nyquist - knee) / (nyquist - out_knee))
    position = np.clip(src / freqs[1], 0, len(freqs) - 1)  # fractional bin, the same for every frame
    low = np.minimum(position.astype(int), len(freqs) - 2)
    weight = position - low
    magnitude = np.abs(z)
    warped = magnitude[:, low] * (1 - weight) + magnitude[:, low + 1] * weight
    phase = np.divide(z, magnitude, out=np.ones_like(z), where=magnitude > 0)
    return istft_frames(warped * phase, n_fft, hop, pad, len(audio)).astype(np.float32)


@lru_cache(maxsize=64)
def _resampling_filter(up: int, down: int, dtype: str) -> np.ndarray:
    """The low-pass `scipy.signal.resample_poly` designs for up/down (in lowest terms) by default, in the
    signal's dtype as it makes it (Kaiser window, beta 5; read-only). Made once per ratio: designing
    it costs as much as a good part of the resampling (16 kHz from an engine's 22,050 Hz takes an
    8,821-tap filter), and every clip would design it again."""
    from scipy.signal import firwin

    rate = max(up, down)
    h = firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)).astype(dtype)
    h.flags.writeable = False
    return h


def resample(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    """`scipy.signal.resample_poly(audio, up, down)` with its default filter made once per ratio and dtype
    (`_resampling_filter`): the same samples, bit for bit (tested)."""
    from scipy.signal import resample_poly

    g = math.gcd(up, down)
    audio = np.asarray(audio)
    if up == down or audio.dtype.kind != "f":
        return resample_poly(audio, up, down)
    return resample_poly(audio, up // g, down // g, window=_resampling_filter(up // g, down // g, audio.dtype.str))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (pitch, formants and tempo together, as a tape does): resampling."""
    from fractions import Fraction

    if factor == 1.0 or not len(audio):
        return audio
    ratio = Fraction(factor).limit_denominator(100)
    return resample(audio, ratio.denominator, ratio.numerator).astype(np.float32)


# Per clip: how a voice becomes many speakers (`perturb_voice`).
VTLP_RANGE = (0.8, 1.2)  # an adult male's formants sit about 15-20% below an adult female's
SPEED_RANGE = (0.9, 1.1)


def perturb_voice(rng: np.random.Generator, speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """Another speaker from the same voice: a vocal-tract length (VTLP factor in VTLP_RANGE, 80% of
    clips) and a speed (SPEED_RANGE, 50%: pitch and tempo together), drawn per clip."""
    if len(speech) and rng.random() < 0.8:
        speech = vtlp(speech, float(rng.uniform(*VTLP_RANGE)), sample_rate)
    if len(speech) and rng.random() < 0.5:
        speech = change_speed(speech, float(rng.uniform(*SPEED_RANGE)))
    return speech


def room_response(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A synthetic room impulse response: the direct sound, then exponentially decaying
    noise (reverberation time RT60 0.15-0.9 s) starting 1-10 ms later."""
    rt60 = rng.uniform(0.15, 0.9)
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    delay = int(rng.uniform(0.001, 0.010) * sample_rate)
    tail[:delay] = 0.0
    tail *= rng.uniform(0.2, 1.0) / (np.sqrt(np.sum(tail**2)) + 1e-12)  # direct-to-reverberant 0-14 dB
    tail[0] = 1.0
    return tail


def bandpass_sos(order: int, low: float, high: float, sample_rate: int) -> np.ndarray:
    """A digital Butterworth band-pass of `order` as second-order sections: the filter of scipy's
    `butter(order, [low, high], "bandpass", output="sos")` (the same poles, zeros and gain: analog
    prototype, band-pass transform, bilinear transform with pre-warped edges) in a closed form, much
    faster than scipy's general design, which is made for every rendered clip."""
    w1, w2 = 4.0 * np.tan(np.pi * np.array([low, high], np.float64) / sample_rate)  # pre-warped, fs = 2
    centre, width = np.sqrt(w1 * w2), w2 - w1
    lowpass = -np.exp(1j * np.pi * np.arange(-order + 1, order, 2) / (2 * order)) * width / 2
    root = np.sqrt(lowpass * lowpass - centre * centre)
    analog = np.concatenate([lowpass + root, lowpass - root])
    poles = (4.0 + analog) / (4.0 - analog)
    # `order` zeros at s = 0 go to z = 1, the `order` at infinity to z = -1: one of each per section
    gain = width ** order * np.real(4.0 ** order / np.prod(4.0 - analog))
    upper = np.sort_complex(poles[poles.imag > 0])
    sos = np.zeros((order, 6))
    sos[:, 0], sos[:, 2], sos[:, 3] = 1.0, -1.0, 1.0
    sos[:, 4], sos[:, 5] = -2.0 * upper.real, np.abs(upper) ** 2
    sos[0, :3] *= gain
    return sos


def microphone(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A band-limited microphone: telephone band, a small MEMS/laptop capsule, or a wide one."""
    from scipy.signal import sosfilt

    kind = rng.integers(3)
    if kind == 0:
        low, high = rng.uniform(250, 400), rng.uniform(3000, 3600)
    elif kind == 1:
        low, high = rng.uniform(100, 250), rng.uniform(4500, 7000)
    else:
        low, high = rng.uniform(20, 80), 7800.0
    return sosfilt(bandpass_sos(4, low, high, sample_rate), audio)


def babble(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Speech-like noise: pink noise in the speech band, amplitude-modulated at syllable rates."""
    from scipy.signal import sosfilt

    noise = make_noise(np.random.default_rng(rng.integers(2**31)), n, sample_rate)
    noise = sosfilt(bandpass_sos(2, 200.0, 3500.0, sample_rate), noise)
    t = np.arange(n) / sample_rate
    envelope = sum(1 + np.sin(2 * np.pi * rng.uniform(2, 7) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3))
    out = noise * envelope
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def recording_like(rng: np.random.Generator, clip: np.ndarray, sample_rate: int) -> np.ndarray:
    """What a real recording does to a clean clip: a room (reverberation, in 70% of clips), more
    noise of another kind (babble or coloured, 0-25 dB SNR, 60%), a band-limited microphone,
    a level from quiet to hot with clipping (25%), and a DC offset (50%)."""
    from scipy.signal import fftconvolve

    n = len(clip)
    out = clip.astype(np.float64)
    if rng.random() < 0.7:
        out = fftconvolve(out, room_response(rng, sample_rate))[:n]
    rms = np.sqrt(np.mean(out**2)) + 1e-9
    if rng.random() < 0.6:
        noise = babble(rng, n, sample_rate) if rng.random() < 0.5 else make_noise(rng, n, sample_rate)
        out = out + noise * rms / 10 ** (rng.uniform(0.0, 25.0) / 20)
    out = microphone(rng, out, sample_rate)
    out = out / (np.abs(out).max() + 1e-12) * 10 ** (rng.uniform(-26.0, -3.0) / 20)
    if rng.random() < 0.25:
        out = np.clip(out * 10 ** (rng.uniform(6.0, 20.0) / 20), -1.0, 1.0)
    if rng.random() < 0.5:
        out = out + rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.1)
    return out.astype(np.float32)


def read_wav(path: Path, sample_rate: int, notes: WavNotes | None = None) -> np.ndarray:
    """Mono float32 audio at `sample_rate`. Policy: stereo is averaged to mono;
    other sample rates are resampled (polyphase); 8/16/32-bit PCM and float WAVs are read.
    `notes`, when given, counts what was converted."""
    import struct

    import scipy.io.wavfile

    try:
        rate, data = scipy.io.wavfile.read(path)
    except (ValueError, OSError, EOFError, struct.error) as e:
        raise BuildError(f"{path}: not a readable WAV file ({e})") from None
    if data.size == 0:
        raise BuildError(f"{path}: WAV file holds no samples")
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        audio = data.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
        if notes is not None:
            notes.downmixed += 1
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        audio = resample(audio, sample_rate // g, rate // g).astype(np.float32)
        if notes is not None:
            notes.resampled[rate] = notes.resampled.get(rate, 0) + 1
    return audio


@dataclass
class WavNotes:
    """What the read policy changed in a folder of recordings, said once per build."""

    files: int = 0
    downmixed: int = 0
    resampled: dict[int, int] = field(default_factory=dict)  # original rate -> files
    padded: int = 0
    trimmed: int = 0
    split_rule: str = ""  # how clips were dealt to splits, when a list file is missing (SplitRule.note)

    def count_length(self, samples: int, clip_samples: int) -> None:
        self.files += 1
        self.padded += samples < clip_samples
        self.trimmed += samples > clip_samples

    def summary(self, sample_rate: int) -> str:
        rates = ", ".join(f"{n} at {r} Hz" for r, n in sorted(self.resampled.items())) or "none"
        return (f"{self.files} clips read: {self.downmixed} stereo averaged to mono; resampled to {sample_rate} Hz: "
                f"{rates}; {self.padded} shorter than 1 s zero-padded; {self.trimmed} longer cut to their "
                f"loudest second")


def fit_clip(audio: np.ndarray, clip_samples: int) -> np.ndarray:
    """Policy for clip length: shorter clips are zero-padded at the end, longer ones
    keep their loudest `clip_samples` window."""
    if len(audio) < clip_samples:
        return np.pad(audio, (0, clip_samples - len(audio)))
    if len(audio) > clip_samples:
        energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
        window = energy[clip_samples:] - energy[:-clip_samples]
        start = int(np.argmax(window))
        return audio[start:start + clip_samples]
    return audio
