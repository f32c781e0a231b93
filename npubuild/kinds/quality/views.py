"""How a photo reaches the image-quality model: one or two views of it, each head reading one.

- The whole view: the photo's centre square resized to the model's input (height x width), what the
  exposure and noise heads judge: the light of the whole picture.
- The detail view (recipe `image.detail_side` > 0): the centre square resized to
  n = max(height, min(detail_side, its side)) pixels, and the model's input cut from its centre. Blur
  that a person sees in a photo is a few pixels at the size they look at it; shrinking a 3,000-pixel
  photo to 128 pixels makes 10 pixels of shake less than half a pixel. At detail_side 512 a shake of
  1% of the photo's side is 5 pixels of the view, whatever the camera's resolution. Photos smaller than
  detail_side are not enlarged (their own pixels are the finest there is).

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


def detail_view(image: np.ndarray, size: int, detail_side: int) -> np.ndarray:
    """The detail view of an image (uint8 or float RGB, any size) as uint8 size x size x 3."""
    image = _float_rgb(image)
    square = center_square(image)
    n = detail_square(square.shape[0], size, detail_side)
    top = (n - size) // 2
    resized = resize(square, n, n) if n != square.shape[0] else square
    return _to_uint8(resized[top:top + size, top:top + size])


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
