"""`invoke evaluate` for image quality: a folder of images with a labels.csv, every file used or
counted as skipped with its reason (unreadable or smaller than 32x32: skipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.config import Recipe
from npubuild.errors import BuildError
from npubuild.kinds.base import Folder, problem_of
from npubuild.kinds.quality.data import read_image, read_labels, to_model_input


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
            images.append(read_image(path, recipe.image.height))
        except BuildError as e:
            folder.skip(problem_of(e, path), name)
            continue
        labels.append(row)
    if not images:
        raise BuildError(f"{data_dir / 'labels.csv'}: none of the listed images could be read")
    folder.x = to_model_input(np.stack(images))
    folder.y = np.array(labels, np.int64)
    folder.read = len(images)
    return folder
