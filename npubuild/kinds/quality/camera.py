"""A camera, as far as image quality goes: what happens to a scene between the lens and the JPEG.

All optics and exposure work in linear light (`to_linear`, the inverse sRGB transfer function):

1. the scene (a clean sRGB image, decoded to linear);
2. blur by the optics or the hand: a camera-shake trajectory or a defocus disc (`shake_kernel`,
   `defocus_kernel`), always with a little demosaic-like softness;
3. exposure as a shift of `ev` stops: linear values times 2**ev, clipped at sensor saturation (1.0);
4. the sensor: shot noise (variance proportional to the signal) and read noise (constant), given as
   the noise standard deviation at 18% grey (`sensor_noise`);
5. the camera's tone curve (`TONE_CURVES`: sRGB, and a few other response curves), then 8 bits;
6. JPEG compression at a quality (Pillow's encoder).

`Shot` holds every parameter of one picture; `take` applies it. The training data and the
camera-like test set draw from different tone curves, JPEG qualities and noise levels
(`TRAIN_CAMERA`, `TEST_CAMERA`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np

from npubuild.kinds.quality import exact_math

GREY = 0.18  # linear reflectance of mid-grey: where noise levels are stated


def _srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb <= 0.04045, srgb / 12.92, exact_math.power((srgb + 0.055) / 1.055, 2.4))


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * exact_math.power(linear, 1 / 2.4) - 0.055)


@cache
def _curve(name: str) -> exact_math.Curve:
    """A transfer function or tone curve as an `exact_math.Curve` (tabulated once per process)."""
    functions = {"to_linear": _srgb_to_linear, "srgb": _linear_to_srgb, "gamma2.0": _gamma(2.0),
                 "gamma2.4": _gamma(2.4), "filmic0.3": _filmic(0.3), "filmic0.6": _filmic(0.6),
                 "log30": _log_like(30.0), "log100": _log_like(100.0)}
    return exact_math.Curve(functions[name])


def to_linear(srgb: np.ndarray) -> np.ndarray:
    """The inverse sRGB transfer function (IEC 61966-2-1), float32."""
    return _curve("to_linear")(srgb)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    """The sRGB transfer function, float32."""
    return _curve("srgb")(linear)


def _gamma(g: float):
    return lambda x: exact_math.power(np.clip(x, 0.0, 1.0), 1.0 / g)


def _filmic(contrast: float):
    """sRGB, then an S-curve around mid-grey (a phone's "punchy" rendering)."""
    def curve(x):
        y = _linear_to_srgb(np.clip(x, 0.0, 1.0))
        s = y * y * (3 - 2 * y)  # smoothstep
        return (1 - contrast) * y + contrast * s
    return curve


def _log_like(strength: float):
    """A flat, log-like rendering that keeps highlights (some action cameras, HDR modes)."""
    return lambda x: exact_math.log(1.0 + strength * np.clip(x, 0.0, 1.0).astype(np.float64)) / exact_math.log(
        1.0 + strength)


class _ToneCurve:
    """A tone curve by name (linear light in [0, 1] -> display value), tabulated when first used."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, x) -> np.ndarray:
        return _curve(self.name)(x)


TONE_CURVES = {name: _ToneCurve(name) for name in ("srgb", "gamma2.0", "gamma2.4", "filmic0.3", "filmic0.6",
                                                   "log30", "log100")}


@dataclass(frozen=True)
class CameraStyle:
    """What a kind of camera chooses: its tone curves, JPEG qualities and sensor noise floor."""

    tone_curves: tuple[str, ...]
    jpeg_quality: tuple[int, int]  # inclusive range
    clean_noise: tuple[float, float]  # noise sigma at 18% grey of a clean picture (linear)


# Short sides of the images cameras take, in pixels: MCU camera modules (QVGA, VGA), HD and full-HD
# webcams and video, 5 MP and 12 MP phones. A picture's blur and softness are drawn in its camera's
# pixels and brought to the model's view (`data.view_scale`).
CAMERA_SIDES = (240, 480, 720, 1080, 1944, 3024)

TRAIN_CAMERA = CameraStyle(("srgb", "gamma2.4", "filmic0.3"), (75, 95), (0.0, 0.004))
# The camera-like test set: other curves, other qualities, another noise floor.
TEST_CAMERA = CameraStyle(("gamma2.0", "filmic0.6", "log30"), (55, 70), (0.004, 0.008))


@dataclass(frozen=True)
class Shot:
    """Every parameter of one picture."""

    blur: str  # "none" | "shake" | "defocus"
    blur_px: float  # shake: trajectory length; defocus: disc radius (pixels at the image's size)
    blur_seed: int
    ev: float  # exposure shift in stops
    noise: float  # noise standard deviation at 18% grey, linear, before the tone curve
    softness: float  # demosaic-like Gaussian sigma, pixels
    tone_curve: str
    jpeg_quality: int


def shake_kernel(length_px: float, seed: int, size: int | None = None) -> np.ndarray:
    """A camera-shake point-spread function: a random trajectory (a random walk with inertia and
    sudden jerks, as in hand-shake models), scaled to `length_px` of path, splatted bilinearly."""
    rng = np.random.default_rng(seed)
    steps = 64
    velocity = rng.standard_normal(2)
    velocity /= float(np.sqrt(velocity[0] * velocity[0] + velocity[1] * velocity[1])) + 1e-9
    points = [np.zeros(2)]
    for _ in range(steps):
        jerk = rng.standard_normal(2) * (1.5 if rng.random() < 0.1 else 0.3)
        velocity = 0.8 * velocity + jerk - 0.05 * points[-1]  # inertia, jerks, a pull back to the start
        points.append(points[-1] + velocity)
    path = np.array(points)
    steps_taken = np.diff(path, axis=0)
    travelled = np.sum(np.sqrt(steps_taken[:, 0] * steps_taken[:, 0] + steps_taken[:, 1] * steps_taken[:, 1]))
    path = (path - path.mean(axis=0)) * (length_px / max(travelled, 1e-9))
    half = int(np.ceil(np.abs(path).max())) + 1
    size = size or 2 * half + 1
    kernel = np.zeros((size, size), np.float64)
    # sample the path densely and splat each sample over its four neighbours
    dense = np.concatenate([np.linspace(a, b, 8, endpoint=False) for a, b in zip(path[:-1], path[1:], strict=True)])
    c = (size - 1) / 2
    y, x = dense[:, 0] + c, dense[:, 1] + c
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    # each sample's four neighbours, in the order a loop over the samples would add them (np.add.at adds
    # in index order, so the sums are the same bits)
    rows = np.stack([y0, y0, y0 + 1, y0 + 1], axis=1).astype(np.int64).ravel()
    cols = np.stack([x0, x0 + 1, x0, x0 + 1], axis=1).astype(np.int64).ravel()
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=1).ravel()
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    np.add.at(kernel, (rows[inside], cols[inside]), weights[inside])
    return (kernel / kernel.sum()).astype(np.float32)


def defocus_kernel(radius_px: float) -> np.ndarray:
    """A defocus disc (a circular aperture out of focus), anti-aliased at its edge."""
    r = int(np.ceil(radius_px)) + 1
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.clip(radius_px + 0.5 - np.sqrt(x * x + y * y), 0.0, 1.0)
    return (k / k.sum()).astype(np.float32)


def blur_linear(linear: np.ndarray, shot: Shot) -> np.ndarray:
    from npubuild.kinds.quality.exact_math import fft_convolve_same, gaussian_filter

    out = linear
    if shot.blur != "none" and shot.blur_px > 0:
        kernel = shake_kernel(shot.blur_px, shot.blur_seed) if shot.blur == "shake" else defocus_kernel(shot.blur_px)
        pad = kernel.shape[0] // 2 + 1
        padded = np.pad(out, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        out = np.stack([fft_convolve_same(padded[..., c], kernel) for c in range(3)], axis=-1)
        out = out[pad:-pad, pad:-pad]
    if shot.softness > 0:
        out = gaussian_filter(out, (shot.softness, shot.softness, 0), mode="reflect")
    return np.clip(out, 0.0, None).astype(np.float32)


def expose(linear: np.ndarray, ev: float) -> np.ndarray:
    """`ev` stops more (or less) light: linear values times 2**ev, clipped at sensor saturation."""
    return np.clip(linear * np.float32(exact_math.exp2(ev)), 0.0, 1.0).astype(np.float32)


def sensor_noise(rng: np.random.Generator, linear: np.ndarray, sigma_at_grey: float) -> np.ndarray:
    """Shot noise (variance proportional to the signal) and read noise (constant), half of the
    variance each at 18% grey; some of it differs per colour channel. Clipped to the sensor's range."""
    if sigma_at_grey <= 0:
        return linear
    shot = 0.5 * sigma_at_grey * sigma_at_grey / GREY
    read = 0.5 * sigma_at_grey * sigma_at_grey
    std = np.sqrt(shot * linear + read)
    chroma = rng.uniform(0.2, 0.6)
    common = rng.standard_normal(linear.shape[:2])[..., None]
    per_channel = rng.standard_normal(linear.shape)
    noise = std * ((1 - chroma) * common + chroma * per_channel) / np.sqrt((1 - chroma) * (1 - chroma) + chroma * chroma)
    return np.clip(linear + noise, 0.0, 1.0).astype(np.float32)


def jpeg(image8: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode with Pillow's JPEG codec (4:2:0, as cameras store them)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image8).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"), np.uint8).copy()


def take(rng: np.random.Generator, scene_srgb: np.ndarray, shot: Shot) -> tuple[np.ndarray, float]:
    """The picture of a scene (sRGB float in [0, 1]) as the camera stores it (uint8 RGB), and the
    share of pixels clipped at sensor saturation in every channel."""
    return develop(rng, blur_linear(to_linear(scene_srgb), shot), shot)


def develop(rng: np.random.Generator, blurred: np.ndarray, shot: Shot) -> tuple[np.ndarray, float]:
    """`take` from the light that reached the sensor (linear, blurred already): exposure, noise, tone
    curve, 8 bits, JPEG."""
    exposed = expose(blurred, shot.ev)
    clipped = float(np.mean(np.all(exposed >= 1.0, axis=-1)))
    noisy = sensor_noise(rng, exposed, shot.noise)
    toned = TONE_CURVES[shot.tone_curve](noisy)
    image8 = np.round(np.clip(toned, 0.0, 1.0) * 255.0).astype(np.uint8)
    return jpeg(image8, shot.jpeg_quality), clipped
