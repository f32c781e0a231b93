"""Image-quality data: built-in (clean base images, degraded on purpose) or a labelled folder.

Built-in dataset, deterministic for a seed:

- Base images: the natural photos bundled inside scikit-image's wheel (no
  download), and skin-like textures generated here (tone, shading, mottling,
  pores, freckles, fine hairs). Each split has base images of its own: the
  photos are dealt to train/val/test, and textures come from disjoint seeds.
- A sample: a random crop (with enough fine detail for blur to be visible),
  flips and quarter turns, resized to the model's input, exposure normalised to
  a well-lit mean; then, independently per issue, a degradation:
  blur (Gaussian, motion or defocus), exposure (under: gain/gamma down; over:
  gain/gamma up with clipping) and sensor-like noise (signal-dependent shot
  noise plus read noise). Each issue's label comes from the parameters drawn,
  which avoid a margin band between "clean" and "degraded", so no label is a
  coin toss.

Real data (`--data-dir DIR`): images plus `labels.csv` with a `file` column and
one 0/1 column per head (an optional `split` column: train/val/test; otherwise
files are split 70/15/15 by a hash of their name). Every image is centre-cropped
to a square and resized to the model input (area averaging when shrinking).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.stages import atomic_output, say

# Photos bundled in scikit-image 0.26's wheel (skimage/data/*.png|jpg), by loader name.
# clock_motion is left out: it is motion-blurred already.
NATURAL = ("astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "moon",
           "hubble_deep_field", "retina", "immunohistochemistry", "motorcycle_left", "motorcycle_right", "page",
           "text", "cell")
SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"train": 0.7, "val": 0.15, "test": 0.15}
MIN_SIDE = 32
BASE_SIDE = 288  # photos are scaled so their short side is at most this before cropping  # smaller real images are rejected rather than upscaled beyond recognition

# Degradation parameter ranges: (clean range, degraded range). The gap between them is the margin band.
BLUR_SIGMA = ((0.0, 0.5), (1.8, 4.0))  # Gaussian blur sigma, pixels at model resolution
MOTION_LENGTH = (9, 21)  # motion blur kernel length (degraded only)
DEFOCUS_RADIUS = (3.0, 7.0)  # defocus disc radius (degraded only)
DARK_GAIN = ((0.8, 1.25), (0.15, 0.35))
BRIGHT_GAIN = ((0.8, 1.25), (2.3, 3.3))
NOISE_SIGMA = ((0.0, 0.015), (0.07, 0.18))  # noise standard deviation at mid-grey, in [0, 1] units
# How often each issue is present in the built-in data.
P_BLUR, P_NOISE = 0.4, 0.4
P_DARK, P_BRIGHT = 0.25, 0.25  # exposure is one of clean / dark / bright


# --------------------------------------------------------------------------- base images


def natural_image(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float RGB in [0, 1] (no network: bundled files only)."""
    import skimage.data as data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    scale = 255.0 if image.dtype == np.uint8 else float(image.max() or 1.0)
    image = (image.astype(np.float32) / scale).clip(0.0, 1.0)
    short = min(image.shape[:2])
    if short > BASE_SIDE:  # crops are taken from at most this resolution: cheaper resizing later
        h, w = image.shape[:2]
        image = resize(image, round(h * BASE_SIDE / short), round(w * BASE_SIDE / short))
    return image


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((size, size)), scale, mode="wrap")
    return field / (field.std() + 1e-8)


# Skin tones (linear-ish sRGB in [0, 1]) from light to dark.
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.90, 0.72, 0.60], [0.82, 0.62, 0.49], [0.70, 0.50, 0.38],
                       [0.55, 0.38, 0.27], [0.40, 0.26, 0.18], [0.28, 0.18, 0.12]], np.float32)


def skin_texture(seed: int, size: int = 256) -> np.ndarray:
    """A skin-like texture: tone, shading, mottling, pores, freckles or moles, fine hairs."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, 3)
    image = np.ones((size, size, 3), np.float32) * tone
    shading = 1.0 + 0.12 * _smooth_noise(rng, size, size / 6)
    mottling = 1.0 + 0.05 * _smooth_noise(rng, size, 6.0)
    redness = 0.04 * _smooth_noise(rng, size, 12.0)
    image *= (shading * mottling)[..., None]
    image[..., 0] += redness
    grain = gaussian_filter(rng.standard_normal((size, size)), 0.7)
    image *= (1.0 + 0.06 * grain / (grain.std() + 1e-8))[..., None]
    # pores: many small dark dots
    pores = np.zeros((size, size), np.float32)
    n = int(rng.integers(150, 500))
    pores[rng.integers(0, size, n), rng.integers(0, size, n)] = 1.0
    pores = gaussian_filter(pores, rng.uniform(0.6, 1.1))
    image *= (1.0 - 0.5 * pores / (pores.max() + 1e-8))[..., None]
    # freckles / moles: a few larger brown spots
    spots = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 12))):
        spots[rng.integers(0, size), rng.integers(0, size)] = rng.uniform(0.5, 1.0)
    spots = gaussian_filter(spots, rng.uniform(1.5, 4.0))
    if spots.max() > 0:
        image *= (1.0 - 0.45 * spots / spots.max())[..., None] ** np.array([0.8, 1.0, 1.2], np.float32)
    # fine hairs: thin dark curves
    hairs = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 25))):
        y, x = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(15, 60)
        bend = rng.uniform(-0.02, 0.02)
        for t in np.linspace(0, length, int(length * 2)):
            a = angle + bend * t
            yy, xx = int(y + t * np.sin(a)) % size, int(x + t * np.cos(a)) % size
            hairs[yy, xx] = 1.0
    hairs = gaussian_filter(hairs, 0.5)
    image *= (1.0 - 0.6 * hairs / (hairs.max() + 1e-8))[..., None]
    # specular highlights
    shine = np.clip(_smooth_noise(rng, size, 10.0) - 1.8, 0, None)
    image += 0.25 * shine[..., None]
    return image.clip(0.0, 1.0)


# --------------------------------------------------------------------------- sample geometry


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float RGB; area averaging (anti-aliasing) when shrinking."""
    from skimage.transform import resize as sk_resize

    shrinking = image.shape[0] > height or image.shape[1] > width
    return sk_resize(image, (height, width), order=1, anti_aliasing=shrinking, preserve_range=True,
                     mode="reflect").astype(np.float32)


def center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def _detail(image: np.ndarray) -> float:
    grey = image.mean(axis=-1)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(lap.std() / (grey.mean() + 0.05))


def random_view(rng: np.random.Generator, base: np.ndarray, size: int) -> np.ndarray:
    """A crop with fine detail, flipped / turned, at model resolution, exposure normalised."""
    h, w = base.shape[:2]
    best, best_detail = None, -1.0
    for _ in range(6):
        side = int(min(h, w) * rng.uniform(0.45, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        view = resize(base[top:top + side, left:left + side], size, size)
        detail = _detail(view)
        if detail > best_detail:
            best, best_detail = view, detail
        if detail > 0.08:
            break
    view = best
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = np.rot90(view, int(rng.integers(4))).copy()
    luminance = float(view.mean())
    return (view * (rng.uniform(0.38, 0.55) / max(luminance, 1e-3))).clip(0.0, 1.0)


# --------------------------------------------------------------------------- degradations


def _kernel_motion(length: int, angle: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    for t in np.linspace(-c, c, length * 3):
        k[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1.0
    return k / k.sum()


def _kernel_disc(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    k = (x * x + y * y <= radius * radius).astype(np.float32)
    return k / k.sum()


def blur(image: np.ndarray, kind: str, strength: float, angle: float = 0.0) -> np.ndarray:
    from scipy.ndimage import convolve, gaussian_filter

    if kind == "gaussian":
        return gaussian_filter(image, (strength, strength, 0), mode="reflect") if strength > 0 else image
    kernel = _kernel_motion(int(strength), angle) if kind == "motion" else _kernel_disc(strength)
    return np.stack([convolve(image[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)


def expose(image: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    return (np.clip(image * gain, 0.0, 1.0) ** gamma).astype(np.float32)


def add_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Sensor-like noise: shot noise (variance grows with the signal) plus read noise, sigma at mid-grey."""
    if sigma <= 0:
        return image
    shot = 0.7 * sigma**2 / 0.5  # variance per unit signal so that 70% of the variance at 0.5 is shot noise
    read = 0.3 * sigma**2
    std = np.sqrt(shot * image + read)
    chroma = rng.uniform(0.0, 0.5)  # some noise differs per channel
    common = rng.standard_normal(image.shape[:2])[..., None]
    per_channel = rng.standard_normal(image.shape)
    noise = std * ((1 - chroma) * common + chroma * per_channel) / np.sqrt((1 - chroma) ** 2 + chroma**2)
    return (image + noise).clip(0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Degradation:
    blurry: bool
    blur_kind: str
    blur_strength: float
    blur_angle: float
    exposure: str  # clean | dark | bright
    gain: float
    gamma: float
    noisy: bool
    noise_sigma: float

    def labels(self, heads: tuple[str, ...]) -> list[int]:
        known = {"blurry": self.blurry, "too_dark": self.exposure == "dark",
                 "too_bright": self.exposure == "bright", "noisy": self.noisy}
        return [int(known[h]) for h in heads]


SUPPORTED_HEADS = ("blurry", "too_dark", "too_bright", "noisy")


def draw_degradation(rng: np.random.Generator) -> Degradation:
    def pick(ranges, degraded):
        low, high = ranges[1] if degraded else ranges[0]
        return float(rng.uniform(low, high))

    blurry = bool(rng.random() < P_BLUR)
    kind = str(rng.choice(["gaussian", "motion", "defocus"])) if blurry else "gaussian"
    if kind == "gaussian":
        strength = pick(BLUR_SIGMA, blurry)
    elif kind == "motion":
        strength = float(rng.integers(MOTION_LENGTH[0], MOTION_LENGTH[1] + 1))
    else:
        strength = float(rng.uniform(*DEFOCUS_RADIUS))
    u = rng.random()
    exposure = "dark" if u < P_DARK else "bright" if u < P_DARK + P_BRIGHT else "clean"
    if exposure == "dark":
        # mostly gain, sometimes a gamma darkening instead
        gain, gamma = (pick(DARK_GAIN, True), 1.0) if rng.random() < 0.7 else (rng.uniform(0.5, 0.7),
                                                                                rng.uniform(2.2, 3.2))
    elif exposure == "bright":
        gain, gamma = (pick(BRIGHT_GAIN, True), 1.0) if rng.random() < 0.7 else (rng.uniform(1.5, 1.9),
                                                                                 rng.uniform(0.3, 0.45))
    else:
        gain, gamma = pick(DARK_GAIN, False), float(rng.uniform(0.87, 1.15))
    noisy = bool(rng.random() < P_NOISE)
    return Degradation(blurry, kind, strength, float(rng.uniform(0, np.pi)), exposure, float(gain), float(gamma),
                       noisy, pick(NOISE_SIGMA, noisy))


def degrade(rng: np.random.Generator, image: np.ndarray, d: Degradation) -> np.ndarray:
    """Optics first (blur), then exposure, then the sensor (noise), then 8-bit."""
    out = blur(image, d.blur_kind, d.blur_strength, d.blur_angle)
    out = expose(out, d.gain, d.gamma)
    out = add_noise(rng, out, d.noise_sigma)
    return np.round(out * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- built-in dataset


def split_bases(seed: int) -> dict[str, list[str]]:
    """Deal the bundled photos to the splits (no photo in two splits)."""
    order = [NATURAL[i] for i in np.random.default_rng([seed, 7]).permutation(len(NATURAL))]
    n_test = n_val = max(1, round(len(order) * 0.15))
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def texture_seeds(seed: int, split: str, count: int) -> list[int]:
    """Texture seeds of a split: disjoint between splits by construction."""
    return [int(seed) * 1_000_003 + SPLITS.index(split) * 100_000 + i for i in range(count)]


CHUNK = 400  # images per worker task: each chunk has its own random stream, so workers do not matter


def _make_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    seed, split, chunk, count, size, heads, n_textures = args
    rng = np.random.default_rng([seed, SPLITS.index(split), 11, chunk])
    photos = [natural_image(n) for n in split_bases(seed)[split]]
    # each chunk draws its textures from the split's seeds (rendered on demand, then kept)
    seeds = texture_seeds(seed, split, n_textures)
    textures: dict[int, np.ndarray] = {}
    x = np.empty((count, size, size, 3), np.uint8)
    y = np.empty((count, len(heads)), np.uint8)
    for i in range(count):
        if rng.random() < 0.5:
            s = seeds[int(rng.integers(len(seeds)))]
            if s not in textures:
                textures[s] = skin_texture(s)
            base = textures[s]
        else:
            base = photos[int(rng.integers(len(photos)))]
        d = draw_degradation(rng)
        x[i] = degrade(rng, random_view(rng, base, size), d)
        y[i] = d.labels(heads)
    return x, y


def make_split(seed: int, split: str, count: int, size: int, heads: tuple[str, ...],
               workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    n_textures = max(4, count // 25)
    jobs = [(seed, split, c, min(CHUNK, count - c * CHUNK), size, heads, n_textures)
            for c in range(-(-count // CHUNK))]
    from npubuild.stages import Progress

    progress = Progress(count, f"{split} images made")
    parts = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_make_chunk, jobs):  # in order: the same arrays every time
                parts.append(part)
                progress.advance(len(part[0]))
    else:
        for job in jobs:
            parts.append(_make_chunk(job))
            progress.advance(len(parts[-1][0]))
    if not parts:
        return np.empty((0, size, size, 3), np.uint8), np.empty((0, len(heads)), np.uint8)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_builtin(heads: tuple[str, ...], size: int, counts: dict[str, int], seed: int, out: Path) -> None:
    unknown = [h for h in heads if h not in SUPPORTED_HEADS]
    if unknown:
        raise BuildError(f"the built-in image dataset has no degradation for head {unknown[0]!r} "
                         f"(it has {', '.join(SUPPORTED_HEADS)}); use --data-dir with a labels.csv")
    import os

    arrays = {}
    for split in SPLITS:
        x, y = make_split(seed, split, counts[split], size, heads, workers=os.cpu_count() or 1)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        rates = ", ".join(f"{h} {y[:, i].mean():.2f}" for i, h in enumerate(heads))
        say(f"  {split}: {len(x)} images ({rates})")
    _save(out, heads, arrays)


def _save(out: Path, heads: tuple[str, ...], arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(out) as f:
        np.savez(f, heads=np.array(heads), **arrays)


# --------------------------------------------------------------------------- real data


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB at size x size: centre square crop, then resize."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"), np.float32) / 255.0
    except FileNotFoundError:
        raise BuildError(f"{path}: listed in labels.csv but not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BuildError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    if min(image.shape[:2]) < MIN_SIDE:
        raise BuildError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, smaller than "
                         f"{MIN_SIDE}x{MIN_SIDE}")
    return prepare(image, size)


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """The resize policy, shared with the predictor: centre square crop, resize, 8-bit RGB."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.round(resize(center_square(image[..., :3]), size, size) * 255.0).clip(0, 255).astype(np.uint8)


def _split_of(name: str) -> str:
    u = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if u < SPLIT_SHARE["train"] else "val" if u < SPLIT_SHARE["train"] + SPLIT_SHARE["val"] else "test"


def read_labels(data_dir: Path, heads: tuple[str, ...],
                every_split: bool = True) -> list[tuple[str, str, list[int]]]:
    """(file, split, labels) rows of DIR/labels.csv, checked; with `every_split`, each split
    must have images (for training; an evaluation folder need not)."""
    path = data_dir / "labels.csv"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise BuildError(f"{path}: not found (expected a 'file' column and one 0/1 column per head)") from None
    for needed in ("file", *heads):
        if needed not in columns:
            raise BuildError(f"{path}: missing column '{needed}' (has {', '.join(columns) or 'none'})")
    out = []
    for line, row in enumerate(rows, start=2):
        labels = []
        for h in heads:
            value = (row[h] or "").strip()
            if value not in ("0", "1"):
                raise BuildError(f"{path}: line {line}: column '{h}' is {value!r}, expected 0 or 1")
            labels.append(int(value))
        split = (row.get("split") or "").strip() or _split_of(row["file"])
        if split not in SPLITS:
            raise BuildError(f"{path}: line {line}: column 'split' is {split!r}, expected train, val or test")
        out.append((row["file"], split, labels))
    for split in SPLITS if every_split else ():
        if not any(s == split for _, s, _ in out):
            raise BuildError(f"{path}: no images in the {split} split")
    if not out:
        raise BuildError(f"{path}: no rows")
    return out


def build_from_dir(data_dir: Path, heads: tuple[str, ...], size: int, out: Path) -> None:
    rows = read_labels(data_dir, heads)
    arrays = {}
    for split in SPLITS:
        mine = [(f, labels) for f, s, labels in rows if s == split]
        arrays[f"x_{split}"] = np.stack([read_image(data_dir / f, size) for f, _ in mine])
        arrays[f"y_{split}"] = np.array([labels for _, labels in mine], np.uint8)
        say(f"  {split}: {len(mine)} images from {data_dir.name}/")
    _save(out, heads, arrays)


def fingerprint(data_dir: Path) -> str:
    """Content hash of labels.csv and the file names and sizes it lists (cheap, catches edits)."""
    h = hashlib.sha256()
    labels = data_dir / "labels.csv"
    if labels.is_file():
        h.update(labels.read_bytes())
    for p in sorted(data_dir.rglob("*")):
        if p.is_file() and p.name != "labels.csv":
            h.update(f"{p.relative_to(data_dir).as_posix()}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def load_images(features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and 0/1 labels of one split."""
    with np.load(features) as d:
        return d[f"x_{split}"], d[f"y_{split}"]


def to_model_input(images: np.ndarray) -> np.ndarray:
    """The model's input normalisation: x = (pixel - 128) / 128, in [-1, 127/128].

    With a representative set that spans every pixel value (see `full_range_image`),
    the INT8 input gets scale 1/128 and zero point 0, so firmware feeds q = pixel - 128:
    an exact integer, no rounding."""
    return (images.astype(np.float32) - 128.0) / 128.0


def full_range_image(height: int, width: int) -> np.ndarray:
    """A ramp through every 8-bit value, for the representative set (fixes the input range)."""
    ramp = np.arange(height * width * 3, dtype=np.int64) % 256
    return ramp.reshape(height, width, 3).astype(np.uint8)
