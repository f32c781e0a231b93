"""How a photo reaches the image-quality model: one or two views of it, each head reading one.

- The whole view: the photo's centre square resized to the model's input (height x width), what the
  exposure and noise heads judge: the light of the whole picture.
- The detail view (recipe `image.detail_side` > 0): the centre square resized to
  n = max(height, min(detail_side, its side)) pixels, and the model's input cut from it. Blur
  that a person sees in a photo is a few pixels at the size they look at it; shrinking a 3,000-pixel
  photo to 128 pixels makes 10 pixels of shake less than half a pixel. At detail_side 512 a shake of
  1% of the photo's side is 5 pixels of the view, whatever the camera's resolution. Photos smaller than
  detail_side are not enlarged (their own pixels are the finest there is). The crop is the most
  detailed of nine (`crop_candidates`, `crop_detail`): the centre and its eight neighbours one crop
  away (less where the square is smaller), as the training views are detailed crops: a flat centre
  (a wall, the sky) shows no blur to judge and read as blurry. Detail is measured in integers on the
  photo's own pixels (nearest to the view's pixel centres), so the firmware picks the same crop.

The heads in `image.detail_heads` read the detail view, the others the whole view: a photo costs two
inferences of the same model. Both views resize as `data.resize` does (Gaussian anti-aliasing when
shrinking, bilinear sampling at pixel centres, mirrored edges), and the firmware's `quality_preprocess`
computes the same pixels (within one step) without making the n x n image.
"""

from __future__ import annotations

import numpy as np

from npubuild.kinds.quality.exact_math import resize

VIEWS = ("whole", "detail")


def detail_square(side: int, size: int, detail_side: int) -> int:
    """The side n the centre square is resized to for the detail view."""
    return max(size, min(detail_side, side))


def center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def crop_candidates(n: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the detail view's candidate crops in the n x n square, the centre first: the
    centre and, one step of min(size, margin) away, its eight neighbours (row by row)."""
    centre = (n - size) // 2
    step = min(size, centre)
    if step == 0:
        return [(centre, centre)]
    around = [(centre + dy, centre + dx) for dy in (-step, 0, step) for dx in (-step, 0, step)]
    return [(centre, centre)] + [p for p in around if p != (centre, centre)]


def crop_detail(square8: np.ndarray, n: int, size: int, top: int, left: int) -> int:
    """Fine detail of the crop (top, left, size) of the square resized to n, in integers: the grey value
    r + 2g + b of the square's pixel nearest each of the crop's pixel centres (index
    ((2i + 1) side) // (2n)), summed absolute differences of horizontal and vertical neighbours."""
    side = square8.shape[0]
    rows = np.minimum(((2 * np.arange(top, top + size) + 1) * side) // (2 * n), side - 1)
    cols = np.minimum(((2 * np.arange(left, left + size) + 1) * side) // (2 * n), side - 1)
    grey = square8[rows][:, cols].astype(np.int64) @ np.array([1, 2, 1], np.int64)
    return int(np.abs(np.diff(grey, axis=1)).sum() + np.abs(np.diff(grey, axis=0)).sum())


def detail_crop(square8: np.ndarray, n: int, size: int) -> tuple[int, int]:
    """The most detailed candidate crop (the first of equals: the centre wins ties)."""
    candidates = crop_candidates(n, size)
    scores = [crop_detail(square8, n, size, t, left) for t, left in candidates]
    return candidates[int(np.argmax(scores))]


def detail_view(image: np.ndarray, size: int, detail_side: int) -> np.ndarray:
    """The detail view of an image (uint8 or float RGB, any size) as uint8 size x size x 3."""
    image = _float_rgb(image)
    square = center_square(image)
    n = detail_square(square.shape[0], size, detail_side)
    top, left = detail_crop(_to_uint8(square), n, size)
    resized = resize(square, n, n) if n != square.shape[0] else square
    return _to_uint8(resized[top:top + size, left:left + size])


def whole_view(image: np.ndarray, size: int) -> np.ndarray:
    """The whole view of an image (uint8 or float RGB, any size): its centre square resized to size x
    size, 8-bit RGB (`data.prepare`, shared with the predictor and the C preprocessing)."""
    return _to_uint8(resize(center_square(_float_rgb(image)), size, size))


def views_used(recipe) -> tuple[str, ...]:
    """The views a recipe's heads read: ("whole",) or ("whole", "detail")."""
    return ("whole", "detail") if recipe.image.detail_side and recipe.image.detail_heads else ("whole",)


def head_views(recipe) -> list[int]:
    """Per head (recipe order), the index of the view it reads in `views_used(recipe)`."""
    return [1 if h in recipe.image.detail_heads and len(views_used(recipe)) > 1 else 0 for h in recipe.heads]


def photo_views(image: np.ndarray, size: int, detail_side: int = 0) -> np.ndarray:
    """The views of one photo, stacked: uint8 [views, size, size, 3] (the detail view second, when
    detail_side > 0)."""
    views = [whole_view(image, size)]
    if detail_side:
        views.append(detail_view(image, size, detail_side))
    return np.stack(views)


def recipe_views(image: np.ndarray, recipe) -> np.ndarray:
    """`photo_views` of the views a recipe's heads read."""
    detail = recipe.image.detail_side if len(views_used(recipe)) > 1 else 0
    return photo_views(image, recipe.image.height, detail)


def per_head(scores_per_view: np.ndarray, view_of_head: list[int]) -> np.ndarray:
    """[N, views, heads] scores (or int8 outputs) -> [N, heads]: head h from view view_of_head[h]."""
    return np.stack([scores_per_view[:, v, h] for h, v in enumerate(view_of_head)], axis=1)


def _float_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255.0).clip(0, 255).astype(np.uint8)
