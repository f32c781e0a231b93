"""Image-quality data: built-in (clean base images, degraded on purpose) or a labelled folder.

Built-in dataset, deterministic for a seed:

- Base images: the natural photos bundled inside scikit-image's wheel (no
  download), and skin-like textures generated here (tone, shading, mottling,
  pores, freckles, fine hairs). Each split has base images of its own: the
  photos are dealt to train/val/test, and textures come from disjoint seeds.
- A sample: a view of a base as the model sees photos (`views.py`): a detail view
  (a crop at 1-1.5 times the model's size: the photo's own pixels, as the blur
  head sees a photo) or a whole view (60-100% of the base), with enough fine
  detail for blur to be judged (`DETAIL_FLOOR`, for every label), flipped and
  turned, exposure normalised to a well-lit mean; then photographed by a camera
  model in linear light (`camera.py`) whose resolution (`camera.CAMERA_SIDES`)
  sets the scale between its pixels and the view's: camera-shake or defocus
  blur, an exposure shift in stops with clipping at sensor saturation, shot and
  read noise, a tone curve, 8 bits and JPEG. Each issue's label comes from the
  physical parameter drawn, which avoids a margin band between "clean" and
  "degraded" (the ranges below), so no label is a coin toss; the parameters are
  kept per image (`p_<split>`) for per-band figures.
- Every number is computed the same way on every x86-64 CPU (`exact_math.py`), so
  a seed gives the same bytes on any of them.
- The camera-like test set (`test_cam`): the test split's bases through another
  camera (other tone curves, JPEG qualities and noise floor: `camera.TEST_CAMERA`).
- `--base-images DIR`: the user's own clean photos replace the built-in bases
  (dealt to splits by a hash of the file name), with the same degradations.

Real data (`--data-dir DIR`): images plus `labels.csv` with a `file` column and
one 0/1 column per head (an optional `split` column: train/val/test; otherwise
files are split 70/15/15 by a hash of their name). Every image gives the views
its heads read (`views.py`), each a row with the image's labels.
"""

from __future__ import annotations

import csv
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError
from npubuild.kinds.quality.views import photo_views, whole_view
from npubuild.stages import atomic_output
from npubuild.terminal import say

# Photos bundled in scikit-image 0.26's wheel (skimage/data/*.png|jpg), by loader name.
# clock_motion is left out: it is motion-blurred already.
NATURAL = ("astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "moon",
           "hubble_deep_field", "retina", "immunohistochemistry", "motorcycle_left", "motorcycle_right", "page",
           "text", "cell")
SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"train": 0.7, "val": 0.15, "test": 0.15}
MIN_SIDE = 32  # smaller real images are rejected rather than upscaled beyond recognition
BASE_SIDE = 512  # photos are scaled so their short side is at most this before cropping
# Views (see `random_view`): which share of them are detail views, how far a detail view's crop is
# shrunk (1-1.5: the photo's own fine detail at the model's pixels), how much of the base a whole view
# spans; a view with less fine detail than DETAIL_FLOOR (`_detail`: a flat patch, a microscope's soft
# cell) is not used, as blur cannot be judged there (a sharp and a blurred copy look the same).
P_DETAIL_VIEW = 0.65
DETAIL_ZOOM = (1.0, 1.5)
WHOLE_SHARE = (0.6, 1.0)
DETAIL_FLOOR = 0.06
DETAIL_ENOUGH = 0.1
VIEW_TRIES = 4


# --------------------------------------------------------------------------- base images


@lru_cache(maxsize=64)
def natural_image(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float RGB in [0, 1] (no network: bundled files only); read-only
    and kept, as a worker's chunks of a split crop the same photos."""
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
    image.flags.writeable = False
    return image


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    from npubuild.kinds.quality.exact_math import gaussian_filter

    field = gaussian_filter(rng.standard_normal((size, size)), scale, mode="wrap")
    return field / (field.std() + 1e-8)


# Skin tones (linear-ish sRGB in [0, 1]) from light to dark.
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.90, 0.72, 0.60], [0.82, 0.62, 0.49], [0.70, 0.50, 0.38],
                       [0.55, 0.38, 0.27], [0.40, 0.26, 0.18], [0.28, 0.18, 0.12]], np.float32)


def skin_texture(seed: int, size: int = 256) -> np.ndarray:
    """A skin-like texture: tone, shading, mottling, pores, freckles or moles, fine hairs."""
    from npubuild.kinds.quality import exact_math
    from npubuild.kinds.quality.exact_math import gaussian_filter

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
        image *= exact_math.power((1.0 - 0.45 * spots / spots.max())[..., None],
                                  np.array([0.8, 1.0, 1.2])).astype(np.float32)
    # fine hairs: thin dark curves
    hairs = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 25))):
        y, x = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(15, 60)
        bend = rng.uniform(-0.02, 0.02)
        t = np.linspace(0, length, int(length * 2))
        a = angle + bend * t
        yy = (y + t * exact_math.sin(a)).astype(np.int64) % size
        xx = (x + t * exact_math.cos(a)).astype(np.int64) % size
        hairs[yy, xx] = 1.0
    hairs = gaussian_filter(hairs, 0.5)
    image *= (1.0 - 0.6 * hairs / (hairs.max() + 1e-8))[..., None]
    # specular highlights
    shine = np.clip(_smooth_noise(rng, size, 10.0) - 1.8, 0, None)
    image += 0.25 * shine[..., None]
    return image.clip(0.0, 1.0)


# --------------------------------------------------------------------------- sample geometry


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float RGB as skimage.transform.resize(order=1, mode="reflect") does, anti-aliasing
    (a Gaussian) when shrinking; with the same bits on every CPU (`exact_math.resize`)."""
    from npubuild.kinds.quality.exact_math import resize as exact_resize

    return exact_resize(image, height, width)


def _laplacian(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey image, its 5-point Laplacian): where the fine detail is."""
    grey = image.mean(axis=-1)
    return grey, 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]


def _detail(image: np.ndarray) -> float:
    grey, lap = _laplacian(image)
    return float(lap.std() / (grey.mean() + 0.05))


def pyramid(base: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """The base, and its half-size copy when that is still larger than `size`: views spanning most of a
    large base are cut from the half-size copy, four times less to filter (read-only arrays)."""
    h, w = base.shape[:2]
    levels = [base]
    if min(h, w) // 2 >= 2 * size:
        half = resize(base, h // 2, w // 2)
        half.flags.writeable = False
        levels.append(half)
    return tuple(levels)


def crop_side(rng: np.random.Generator, short: int, size: int, detail_view: bool) -> int:
    """The side of a view's crop in base pixels: a detail view (the blur head's: a centre crop of the photo
    at `detail_side`) is cut at 1 to 1.5 times the model's size, a whole view (the photo's centre square
    brought to the model's size) spans 60-100% of the base."""
    if detail_view:
        return int(min(short, size * rng.uniform(*DETAIL_ZOOM)))
    return max(int(short * rng.uniform(*WHOLE_SHARE)), min(short, size))


def random_view(rng: np.random.Generator, levels: tuple[np.ndarray, ...], size: int,
                detail_view: bool) -> tuple[np.ndarray, float]:
    """(view, its fine detail): a crop of the base, flipped / turned, at model resolution, exposure
    normalised; of a few crops, the first with DETAIL_ENOUGH fine detail, or the most detailed."""
    h, w = levels[0].shape[:2]
    best, best_detail = None, -1.0
    for _ in range(VIEW_TRIES):
        side = crop_side(rng, min(h, w), size, detail_view)
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        level = len(levels) - 1 if side // 2 ** (len(levels) - 1) >= size else 0
        k = 2 ** level
        crop = levels[level][top // k:(top + side) // k, left // k:(left + side) // k]
        view = resize(crop, size, size)
        detail = _detail(view)
        if detail > best_detail:
            best, best_detail = view, detail
        if detail > DETAIL_ENOUGH:
            break
    view = best
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = np.rot90(view, int(rng.integers(4))).copy()
    luminance = float(view.mean())
    return (view * (rng.uniform(0.38, 0.55) / max(luminance, 1e-3))).clip(0.0, 1.0), best_detail


# --------------------------------------------------------------------------- degradations

# Each head's label comes from a physical parameter of the shot (`camera.Shot`), drawn from a
# degraded range or a clean range, never from the margin band between them:
#   exposure, stops (EV): too dark -4.0 .. -1.5 | band | clean -0.5 .. +0.3 | band | too bright +0.7 .. +2.5
#   blur, in pixels of the model's view: shake trajectory length 4 .. 24 or defocus radius 1.8 .. 8
#       is blurry; clean pictures have no blur or at most 1 px of shake / 0.6 px of defocus. The camera
#       that took the picture (`camera.CAMERA_SIDES`: MCU sensors to 12 MP phones) sets the scale: a
#       detail view shows the photo at min(detail_side, camera side) pixels, a whole view at the
#       model's size, so the blur was view_scale times larger in the camera's own pixels (`p_<split>`
#       keeps both), and the camera's own softness (0.3 .. 0.6 of its pixels) is that much smaller.
#   noise (sigma at 18% grey, linear light): 0.035 .. 0.12 is noisy; clean is the camera's noise floor
# A blurry draw that cannot show is not kept: the picture is drawn again when the blur keeps more than
# BLUR_VISIBLE of the scene's fine detail (a short shake across a smooth patch), or another degradation
# hides it (more than HIDDEN_CLIPPED of the pixels saturated, -3 EV and darker, or noise above HIDDEN_NOISE,
# the noisy head's level: grain that strong masks the edges blur softens, and a model trained
# on both mixed called sharp noisy pictures blurry and missed blurred noisy ones).
EV_DARK, EV_CLEAN, EV_BRIGHT = (-4.0, -1.5), (-0.5, 0.3), (0.7, 2.5)
SHAKE_PX, DEFOCUS_PX = (4.0, 24.0), (1.8, 8.0)
CLEAN_SHAKE_PX, CLEAN_DEFOCUS_PX = 1.0, 0.6
NOISE_SIGMA = (0.035, 0.12)
SOFTNESS = (0.3, 0.6)
HIDDEN_CLIPPED = 0.5
BLUR_VISIBLE = 0.5
HIDDEN_DARK_EV = -3.0
HIDDEN_NOISE = 0.035
# How often each issue is present in the built-in data.
P_BLUR, P_NOISE = 0.4, 0.4
P_DARK, P_BRIGHT = 0.25, 0.25  # exposure is one of clean / dark / bright
# Columns of the physical parameters kept per image (`p_<split>` in the data file).
PARAMS = ("ev", "blur_px", "blur_kind", "noise", "camera_side", "view_scale")
BLUR_KINDS = ("none", "shake", "defocus")
SUPPORTED_HEADS = ("blurry", "too_dark", "too_bright", "noisy")


def view_scale(camera_side: int, detail_view: bool, detail_side: int, size: int) -> float:
    """Pixels of the model's view per pixel of the camera's image: a detail view is the photo at
    min(detail_side, its short side), a whole view its short side brought to the model's size."""
    return min(detail_side, camera_side) / camera_side if detail_view else size / camera_side


def draw_shot(rng: np.random.Generator, style, scale: float = 1.0) -> tuple:
    """(camera.Shot, {head: 0/1}) for one picture taken with `style` (a camera.CameraStyle), seen at
    `scale` view pixels per camera pixel (the blur is drawn in view pixels, the softness in camera pixels)."""
    from npubuild.kinds.quality.camera import Shot

    blurry = bool(rng.random() < P_BLUR)
    if blurry:
        kind = "shake" if rng.random() < 0.5 else "defocus"
        px = float(rng.uniform(*(SHAKE_PX if kind == "shake" else DEFOCUS_PX)))
    else:
        kind = ("none", "shake", "defocus")[int(rng.integers(3))]
        px = 0.0 if kind == "none" else float(rng.uniform(0, CLEAN_SHAKE_PX if kind == "shake" else CLEAN_DEFOCUS_PX))
    u = rng.random()
    exposure = "dark" if u < P_DARK else "bright" if u < P_DARK + P_BRIGHT else "clean"
    ev = float(rng.uniform(*{"dark": EV_DARK, "bright": EV_BRIGHT, "clean": EV_CLEAN}[exposure]))
    noisy = bool(rng.random() < P_NOISE)
    noise = float(rng.uniform(*(NOISE_SIGMA if noisy else style.clean_noise)))
    shot = Shot(kind, px, int(rng.integers(2**31)), ev, noise, float(rng.uniform(*SOFTNESS)) * min(scale, 1.0),
                str(style.tone_curves[int(rng.integers(len(style.tone_curves)))]),
                int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)))
    labels = {"blurry": int(blurry), "too_dark": int(exposure == "dark"), "too_bright": int(exposure == "bright"),
              "noisy": int(noisy)}
    return shot, labels


def shot_params(shot, camera_side: int = 0, scale: float = 1.0) -> list[float]:
    return [shot.ev, shot.blur_px, float(BLUR_KINDS.index(shot.blur)), shot.noise, float(camera_side), scale]


def picture(rng: np.random.Generator, scene: np.ndarray, style, heads: tuple[str, ...], camera_side: int = 0,
            scale: float = 1.0):
    """A labelled picture of `scene` (sRGB float) by a camera of `camera_side` pixels seen at `scale`
    (`view_scale`): (uint8 image, labels per head, PARAMS values). Draws again while a blurry draw
    cannot show (`BLUR_VISIBLE`, clipping, darkness)."""
    from npubuild.kinds.quality.camera import blur_linear, develop, to_linear

    linear = to_linear(scene)
    while True:
        shot, labels = draw_shot(rng, style, scale)
        if labels["blurry"] and (shot.ev <= HIDDEN_DARK_EV or shot.noise > HIDDEN_NOISE):
            continue
        blurred = blur_linear(linear, shot)  # the blur is computed once: for the check and the picture
        if labels["blurry"] and _detail_kept(linear, blurred, shot) > BLUR_VISIBLE:
            continue
        image, clipped = develop(rng, blurred, shot)
        if not (labels["blurry"] and clipped > HIDDEN_CLIPPED):
            return image, [labels[h] for h in heads], shot_params(shot, camera_side, scale)


def fine_detail(image: np.ndarray) -> float:
    """RMS of the Laplacian of the grey image: the finest detail there is."""
    return float(np.sqrt(np.mean(_laplacian(image)[1] ** 2)))


def detail_kept(scene: np.ndarray, shot) -> float:
    """The share of the scene's fine detail (linear light, after the camera's own softness) that the
    shot's blur keeps: about 1 for no blur, near 0 for a blur that wipes it out."""
    from npubuild.kinds.quality.camera import blur_linear, to_linear

    linear = to_linear(scene)
    return _detail_kept(linear, blur_linear(linear, shot), shot)


def _detail_kept(linear: np.ndarray, blurred: np.ndarray, shot) -> float:
    from dataclasses import replace

    from npubuild.kinds.quality.camera import blur_linear

    sharp = fine_detail(blur_linear(linear, replace(shot, blur="none")))
    return fine_detail(blurred) / max(sharp, 1e-9)


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
# The built-in data's splits: the camera-like test set is the test split's bases through TEST_CAMERA.
BUILTIN_SPLITS = (*SPLITS, "test_cam")


@lru_cache(maxsize=256)
def _texture(seed: int) -> np.ndarray:
    """`skin_texture(seed)`, read-only and kept: a split's chunks draw from the same few hundred seeds, and
    rendering a texture costs more than the rest of an image."""
    texture = skin_texture(seed)
    texture.flags.writeable = False
    return texture


def bases_of(split: str) -> str:
    """The split whose base images (and sizes) a built-in split uses: the camera-like set the test split's."""
    return "test" if split == "test_cam" else split


@lru_cache(maxsize=64)
def _natural_levels(name: str, size: int) -> tuple[np.ndarray, ...]:
    return pyramid(natural_image(name), size)


MAX_BASE_DRAWS = 20  # bases tried for a view with enough fine detail before the most detailed is taken


def _make_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from npubuild.kinds.quality.camera import CAMERA_SIDES, TEST_CAMERA, TRAIN_CAMERA

    seed, split, chunk, count, size, heads, n_textures, base_files, detail_side = args
    bases = bases_of(split)
    style = TEST_CAMERA if split == "test_cam" else TRAIN_CAMERA
    rng = np.random.default_rng([seed, BUILTIN_SPLITS.index(split), 11, chunk])
    if base_files is not None:  # the user's own photos (`--base-images`)
        photos, seeds = [pyramid(load_base(Path(f)), size) for f in base_files], []
    else:
        photos = [_natural_levels(n, size) for n in split_bases(seed)[bases]]
        # each chunk draws its textures from the split's seeds (rendered on demand, then kept)
        seeds = texture_seeds(seed, bases, n_textures)
    x = np.empty((count, size, size, 3), np.uint8)
    y = np.empty((count, len(heads)), np.uint8)
    p = np.empty((count, len(PARAMS)), np.float32)
    for i in range(count):
        detail_view = bool(rng.random() < P_DETAIL_VIEW)
        best, best_detail = None, -1.0
        for _ in range(MAX_BASE_DRAWS):  # a view with fine detail to judge blur by (DETAIL_FLOOR)
            if seeds and rng.random() < 0.5:
                levels = (_texture(seeds[int(rng.integers(len(seeds)))]),)
            else:
                levels = photos[int(rng.integers(len(photos)))]
            view, detail = random_view(rng, levels, size, detail_view)
            if detail > best_detail:
                best, best_detail = view, detail
            if detail >= DETAIL_FLOOR:
                break
        camera_side = int(CAMERA_SIDES[int(rng.integers(len(CAMERA_SIDES)))])
        scale = view_scale(camera_side, detail_view, detail_side or size, size)
        x[i], y[i], p[i] = picture(rng, best, style, heads, camera_side, scale)
    return x, y, p


def make_split(seed: int, split: str, count: int, size: int, heads: tuple[str, ...],
               workers: int = 1, base_files: list[str] | None = None,
               detail_side: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images, labels per head, PARAMS per image) of one split; `base_files`: the split's own
    base photos instead of the built-in ones; `detail_side`: the detail view's scale (0: the model's size)."""
    n_textures = max(4, count // 25)
    jobs = [(seed, split, c, min(CHUNK, count - c * CHUNK), size, heads, n_textures, base_files, detail_side)
            for c in range(-(-count // CHUNK))]
    from npubuild.terminal import Progress

    progress = Progress(count, f"{split} images made")
    parts = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        from npubuild.workers import ignore_ctrl_c

        with multiprocessing.get_context("spawn").Pool(workers, initializer=ignore_ctrl_c) as pool:
            for part in pool.imap(_make_chunk, jobs):  # in order: the same arrays every time
                parts.append(part)
                progress.advance(len(part[0]))
    else:
        for job in jobs:
            parts.append(_make_chunk(job))
            progress.advance(len(parts[-1][0]))
    if not parts:
        return (np.empty((0, size, size, 3), np.uint8), np.empty((0, len(heads)), np.uint8),
                np.empty((0, len(PARAMS)), np.float32))
    return tuple(np.concatenate([part[k] for part in parts]) for k in range(3))


def build_builtin(heads: tuple[str, ...], size: int, counts: dict[str, int], seed: int, out: Path,
                  base_dir: Path | None = None, detail_side: int = 0) -> None:
    """The built-in dataset, or with `base_dir` the same degradations of the user's own photos."""
    unknown = [h for h in heads if h not in SUPPORTED_HEADS]
    if unknown:
        raise BuildError(f"the built-in image dataset has no degradation for head {unknown[0]!r} "
                         f"(it has {', '.join(SUPPORTED_HEADS)}); use --data-dir with a labels.csv")
    import os

    bases = deal_base_images(base_dir, size) if base_dir is not None else None
    if bases is not None:
        say(f"  {base_dir.name}/: base images " + ", ".join(f"{s} {len(bases[s])}" for s in SPLITS))
    arrays = {}
    for split in BUILTIN_SPLITS:
        count = counts[bases_of(split)]
        files = None if bases is None else bases[bases_of(split)]
        x, y, p = make_split(seed, split, count, size, heads, workers=os.cpu_count() or 1, base_files=files,
                             detail_side=detail_side)
        arrays[f"x_{split}"], arrays[f"y_{split}"], arrays[f"p_{split}"] = x, y, p
        rates = ", ".join(f"{h} {y[:, i].mean():.2f}" for i, h in enumerate(heads))
        say(f"  {split}: {len(x)} images ({rates})")
    _save(out, heads, arrays)


# --------------------------------------------------------------------------- your own base images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_BASE_IMAGES = 10


def load_base(path: Path) -> np.ndarray:
    """A base photo as float sRGB in [0, 1], its short side at most BASE_SIDE."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"), np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise BuildError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    short = min(image.shape[:2])
    if short > BASE_SIDE:
        h, w = image.shape[:2]
        image = resize(image, round(h * BASE_SIDE / short), round(w * BASE_SIDE / short))
    return image


def deal_base_images(base_dir: Path, size: int) -> dict[str, list[str]]:
    """The image files of `base_dir` (not its subfolders), checked, dealt to train/val/test by a hash
    of their name (70/15/15; a file keeps its split when others are added). One line naming the file
    for an unreadable or too small image, the counts for too few."""
    from PIL import Image, UnidentifiedImageError

    if not base_dir.is_dir():
        raise BuildError(f"{base_dir}: base-images folder does not exist")
    files = sorted(p for p in base_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise BuildError(f"{path}: not a readable image ({e.__class__.__name__})") from None
        if min(width, height) < size:
            raise BuildError(f"{path}: image is {width}x{height}, smaller than the model's {size}x{size} input")
    if len(files) < MIN_BASE_IMAGES:
        raise BuildError(f"{base_dir}: {len(files)} images ({', '.join(IMAGE_SUFFIXES)}), at least "
                         f"{MIN_BASE_IMAGES} are needed")
    dealt = {s: [str(p) for p in files if _split_of(p.name) == s] for s in SPLITS}
    empty = [s for s in SPLITS if not dealt[s]]
    if empty:
        raise BuildError(f"{base_dir}: the hash of the file names sent no image to the {empty[0]} split "
                         f"({', '.join(f'{s} {len(dealt[s])}' for s in SPLITS)}): add images")
    return dealt


def _save(out: Path, heads: tuple[str, ...], arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(out) as f:
        np.savez(f, heads=np.array(heads), **arrays)


# --------------------------------------------------------------------------- real data


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB at size x size: centre square crop, then resize."""
    return prepare(read_photo(path), size)


def read_photo(path: Path) -> np.ndarray:
    """An image file as float RGB in [0, 1] at its own size; one line naming the file when it is missing,
    unreadable or smaller than MIN_SIDE."""
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
    return image


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """The whole view (`views.whole_view`): centre square crop, resize, 8-bit RGB."""
    return whole_view(image, size)


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


def build_from_dir(data_dir: Path, heads: tuple[str, ...], size: int, out: Path, detail_side: int = 0) -> None:
    """A labelled folder's splits. With `detail_side`, each photo gives two rows, its whole and its detail
    view (`views.py`) with the photo's labels: the model learns each head on both, and reads each head on
    the view the recipe gives it."""
    rows = read_labels(data_dir, heads)
    arrays = {}
    for split in SPLITS:
        mine = [(f, labels) for f, s, labels in rows if s == split]
        views = [photo_views(read_photo(data_dir / f), size, detail_side) for f, _ in mine]
        arrays[f"x_{split}"] = np.concatenate(views)
        arrays[f"y_{split}"] = np.array([labels for _, labels in mine for _ in range(len(views[0]))], np.uint8)
        say(f"  {split}: {len(mine)} images from {data_dir.name}/" + (" (two views each)" if detail_side else ""))
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
