"""Maths of the image data that gives the same bits on every x86-64 CPU.

numpy picks its kernels for `exp`, `log`, `power`, `log1p`, `sin`, `cos` by the CPU's instruction set
(AVX-512 machines run Intel's SVML kernels, others the C library's), and its complex multiplication uses
fused multiply-adds where the CPU has them: the same data stage gave other bytes with numpy's AVX-512
kernels switched off (`NPY_DISABLE_CPU_FEATURES`). scipy's `gaussian_filter` and `fftconvolve`, and
scikit-image's `resize` (which uses the former) inherit that through numpy's `exp` and complex product.

Here those functions are built from operations IEEE 754 rounds exactly whatever the instruction set
(add, subtract, multiply, divide, `frexp`, `ldexp`, `floor`, comparisons) and from the kernels of
scipy.ndimage and scipy.fft that do not depend on it (`correlate1d`, `zoom`, `rfft2`/`irfft2`).
Accuracy is a few units in the last place of float64, far below what 8-bit images resolve; what
matters is that it is the same everywhere (`docs/reproducibility.md`).
"""

from __future__ import annotations

import numpy as np

LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that n * LN2_HI is exact for |n| < 2**20 (fdlibm)
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e+00
SQRT_HALF = 0.70710678118654752440
TWO_PI = 6.28318530717958647692
EXP_TERMS = 14  # Taylor terms of exp on |r| <= ln2 / 2: the first left out is < 2e-17 relative
LOG_TERMS = 11  # atanh series terms for log on [sqrt(1/2), sqrt(2)): the first left out is < 1e-17
TRIG_TERMS = 26  # Taylor terms of sin and cos on [-pi, pi]


def exp(x) -> np.ndarray:
    """e**x (float64; x below -700 gives 0)."""
    x = np.clip(np.asarray(x, np.float64), -700.0, 700.0)
    n = np.floor(x * INV_LN2 + 0.5)
    r = (x - n * LN2_HI) - n * LN2_LO
    term = np.ones_like(r)
    total = np.ones_like(r)
    for k in range(1, EXP_TERMS):
        term = term * r / k
        total = total + term
    return np.ldexp(total, n.astype(np.int64))


def log(x) -> np.ndarray:
    """The natural logarithm of x > 0 (float64; -inf at 0)."""
    x = np.asarray(x, np.float64)
    positive = x > 0
    m, e = np.frexp(np.where(positive, x, 1.0))
    low = m < SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    total = np.zeros_like(s)
    for k in range(LOG_TERMS - 1, -1, -1):  # Horner: sum of s2**k / (2k + 1)
        total = total * s2 + 1.0 / (2 * k + 1)
    out = (e * LN2_HI + (2.0 * s * total + e * LN2_LO))
    return np.where(positive, out, -np.inf)


def power(x, y) -> np.ndarray:
    """x**y for x >= 0 and y > 0 (float64)."""
    x = np.asarray(x, np.float64)
    return np.where(x > 0, exp(np.asarray(y, np.float64) * log(np.where(x > 0, x, 1.0))), 0.0)


def exp2(x: float) -> float:
    """2**x as a Python float."""
    return float(exp(np.float64(x) * (LN2_HI + LN2_LO)))


def _wrapped(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x - TWO_PI * np.floor(x / TWO_PI + 0.5)  # into [-pi, pi]


def sin(x) -> np.ndarray:
    r = _wrapped(x)
    r2, term, total = r * r, r, r
    for k in range(1, TRIG_TERMS // 2):
        term = -term * r2 / ((2 * k) * (2 * k + 1))
        total = total + term
    return total


def cos(x) -> np.ndarray:
    r = _wrapped(x)
    r2, term, total = r * r, np.ones_like(r), np.ones_like(r)
    for k in range(1, TRIG_TERMS // 2):
        term = -term * r2 / ((2 * k - 1) * (2 * k))
        total = total + term
    return total


class Curve:
    """A function on [0, 1] as a table of CURVE_STEPS + 1 values (made with the functions above) and
    linear interpolation written out in exact arithmetic: the transfer functions and tone curves of every
    pixel, fast and the same everywhere. Inputs are clipped to [0, 1]; float32 out."""

    STEPS = 1 << 16

    def __init__(self, function) -> None:
        grid = np.arange(self.STEPS + 1, dtype=np.float64) / self.STEPS
        self.table = np.asarray(function(grid), np.float64)
        self.table.flags.writeable = False

    def __call__(self, x) -> np.ndarray:
        position = np.clip(np.asarray(x, np.float64), 0.0, 1.0) * self.STEPS
        index = np.minimum(np.floor(position), self.STEPS - 1)
        fraction = position - index
        index = index.astype(np.int64)
        low = self.table[index]
        return (low + fraction * (self.table[index + 1] - low)).astype(np.float32)


# --------------------------------------------------------------------------- filters


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian weights (radius int(truncate * sigma + 0.5), normalised to sum 1)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = exp(-0.5 / (float(sigma) * float(sigma)) * x * x)
    return weights / weights.sum()


def gaussian_filter(image: np.ndarray, sigma, mode: str = "reflect", truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter (order 0) with these weights: one sigma per axis (a number: every
    axis), axes of sigma 0 left alone; the result in the image's float type."""
    from scipy.ndimage import correlate1d

    sigmas = [float(sigma)] * image.ndim if np.isscalar(sigma) else [float(s) for s in sigma]
    out = image
    for axis, s in enumerate(sigmas):
        if s > 1e-15:
            out = correlate1d(out, gaussian_kernel(s, truncate), axis=axis, mode=mode)
    return np.asarray(out, image.dtype if image.dtype.kind == "f" else np.float64)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """skimage.transform.resize(order=1, mode="reflect", anti_aliasing when shrinking,
    preserve_range=True) of float RGB, as float32: a Gaussian of sigma (factor - 1) / 2 per axis
    (mirrored edges), then bilinear sampling at pixel centres (scipy.ndimage.zoom, grid mode)."""
    from scipy.ndimage import zoom

    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    factors = (h / height, w / width)
    if h > height or w > width:
        sigma = [max(0.0, (f - 1.0) / 2.0) for f in factors] + [0.0] * (image.ndim - 2)
        image = gaussian_filter(image, sigma, mode="mirror")
    scale = (height / h, width / w)
    if image.ndim == 2:
        return zoom(image, scale, order=1, mode="mirror", grid_mode=True).astype(np.float32)
    # a channel at a time: the same values as one 3-D zoom, three to four times faster
    return np.stack([zoom(image[..., c], scale, order=1, mode="mirror", grid_mode=True)
                     for c in range(image.shape[-1])], axis=-1).astype(np.float32)


def fft_convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """scipy.signal.fftconvolve(image, kernel, mode="same") of a 2-D float image, with the spectra's
    product written out in real arithmetic (numpy's complex product fuses multiply-adds on some CPUs)."""
    from scipy.fft import irfft2, next_fast_len, rfft2

    h, w = image.shape
    kh, kw = kernel.shape
    shape = (next_fast_len(h + kh - 1, True), next_fast_len(w + kw - 1, True))
    a, b = rfft2(image.astype(np.float64), shape), rfft2(kernel.astype(np.float64), shape)
    product = np.empty(a.shape, np.complex128)
    product.real = a.real * b.real - a.imag * b.imag
    product.imag = a.real * b.imag + a.imag * b.real
    full = irfft2(product, shape)[:h + kh - 1, :w + kw - 1]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return full[top:top + h, left:left + w]
