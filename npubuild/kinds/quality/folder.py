"""`invoke evaluate` for image quality: a folder of images with a labels.csv, every file used or
counted as skipped with its reason (unreadable or smaller than 32x32: skipped). Each photo reaches the
model as the predictor and firmware bring it (`views.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.errors import BuildError
from npubuild.kinds.base import Folder, problem_of
from npubuild.kinds.quality.data import read_labels, read_photo, to_model_input
from npubuild.kinds.quality.views import recipe_views


def read_quality_folder(recipe: Recipe, data_dir: Path) -> Folder:
    rows = read_labels(data_dir, recipe.heads, every_split=False)
    folder = Folder(np.zeros(0), np.zeros(0), selection="every image listed in labels.csv")
    listed = {name for name, _, _ in rows}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        name = path.relative_to(data_dir).as_posix()
        if name not in listed:
            folder.skip("labels file (read, not an image)" if name == "labels.csv" else "not listed in labels.csv",
                        name)
    images, labels = [], []
    for name, _, row in rows:
        path = data_dir / name
        try:
            images.append(recipe_views(read_photo(path), recipe))
        except BuildError as e:
            folder.skip(problem_of(e, path), name)
            continue
        labels.append(row)
    if not images:
        raise BuildError(f"{data_dir / 'labels.csv'}: none of the listed images could be read")
    views = np.stack(images)  # [N, views, H, W, 3]: each head is scored on the view it reads
    folder.x = to_model_input(views if views.shape[1] > 1 else views[:, 0])
    folder.y = np.array(labels, np.int64)
    folder.read = len(images)
    return folder
