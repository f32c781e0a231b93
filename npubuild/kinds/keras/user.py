"""Your own model and data, read as the `keras` kind needs them; every problem is one line naming the file.

Model (`[keras] model`): a saved tf_keras model (`.h5` or `.keras`), or `file.py:function`, a
function taking no arguments and returning an uncompiled tf_keras model. One output, a softmax
over the recipe's labels (classification); other shapes stop with one line.

Data (`[keras] data`, or `--data-dir`):
- an `.npz` with `x_train, y_train, x_val, y_val, x_test, y_test` (x: the model's input shape per
  sample, any numeric type, fed as float32; y: integer class indices into the recipe's labels);
- a folder with one subfolder per label (the recipe's `labels`, in that order) of images (PNG, JPEG,
  BMP...), centre-cropped to a square, resized to `image_size`, scaled to [0, 1]; split 70/15/15 by
  a hash of each file's name (stable as files come and go);
- `file.py:function`, returning a dict with the six arrays.
Paths are relative to the recipe's file.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from npubuild.errors import BuildError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def resolve(recipe, spec: str) -> Path:
    return (recipe.source.parent / spec).resolve()


def call_function(recipe, spec: str, what: str):
    """Import `file.py` (relative to the recipe) and call `function()` from `file.py:function`."""
    file, _, name = spec.rpartition(":")
    path = resolve(recipe, file)
    if not path.is_file():
        raise BuildError(f"{recipe.source}: field 'keras.{what}' names {file!r}, which is not a file")
    module_spec = importlib.util.spec_from_file_location(f"npubuild_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is one line naming the file
        raise BuildError(f"{path}: cannot be imported ({type(e).__name__}: {e})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise BuildError(f"{path}: has no function {name!r} (field 'keras.{what}')")
    try:
        return function()
    except Exception as e:
        raise BuildError(f"{path}: {name}() failed ({type(e).__name__}: {e})") from None


def source_digest(recipe, spec: str, field: str = "") -> str:
    """What the data or model depends on: the file's sha256 (for a folder: names, sizes, times).
    `field`: the recipe field that names `spec` (for the error), empty for a --data-dir path."""
    from npubuild.stages import folder_fingerprint, sha256_file

    path = resolve(recipe, spec.rpartition(":")[0] if ".py:" in spec else spec)
    if path.is_dir():
        return folder_fingerprint(path)
    if not path.is_file():
        if field:
            raise BuildError(f"{recipe.source}: field 'keras.{field}' names {spec!r}, which does not exist")
        raise BuildError(f"{path}: does not exist")
    return sha256_file(path)


def load_model(recipe):
    """The user's model, checked: one softmax output with one unit per label."""
    from npubuild.tfenv import import_tf

    _, keras = import_tf()
    spec = recipe.keras.model
    if ".py:" in spec:
        model = call_function(recipe, spec, "model")
        where = resolve(recipe, spec.rpartition(":")[0])
    else:
        where = resolve(recipe, spec)
        if not where.is_file():
            raise BuildError(f"{recipe.source}: field 'keras.model' names {spec!r}, which is not a file")
        try:
            model = keras.models.load_model(where, compile=False)
        except Exception as e:
            raise BuildError(f"{where}: not a loadable tf_keras model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(model, keras.Model):
        raise BuildError(f"{where}: gave {type(model).__name__}, not a tf_keras Model (build it with tf_keras)")
    if len(model.outputs) != 1:
        raise BuildError(f"{where}: the model has {len(model.outputs)} outputs; the keras kind takes one "
                         f"(a softmax over the labels)")
    units = int(model.outputs[0].shape[-1])
    if units != len(recipe.labels) or len(model.outputs[0].shape) != 2:
        raise BuildError(f"{where}: the output has shape {tuple(model.outputs[0].shape)}; expected (batch, "
                         f"{len(recipe.labels)}) for the recipe's {len(recipe.labels)} labels")
    activation = getattr(model.layers[-1], "activation", None)
    if type(model.layers[-1]).__name__ != "Softmax" and getattr(activation, "__name__", "") != "softmax":
        raise BuildError(f"{where}: the last layer ({model.layers[-1].name}) is not a softmax; the keras kind "
                         f"takes classifiers ending in one")
    return model


def load_arrays(recipe, source: str | Path, from_recipe: bool) -> dict[str, np.ndarray]:
    """The six arrays from an .npz, a class folder or a function; checked against the labels."""
    spec = str(source)
    if from_recipe and ".py:" in spec:
        arrays = call_function(recipe, spec, "data")
        where = resolve(recipe, spec.rpartition(":")[0])
        if not isinstance(arrays, dict):
            raise BuildError(f"{where}: the data function returned {type(arrays).__name__}, not a dict of arrays")
    else:
        where = resolve(recipe, spec) if from_recipe else Path(spec)
        if where.is_dir():
            return read_class_folder(recipe, where)
        if not where.is_file():
            raise BuildError(f"{where}: data file does not exist")
        try:
            with np.load(where, allow_pickle=False) as d:
                arrays = {k: d[k] for k in d.files}
        except (OSError, ValueError) as e:
            raise BuildError(f"{where}: not a readable .npz ({e})") from None
    return check_arrays(recipe, where, arrays)


def check_arrays(recipe, where: Path, arrays: dict) -> dict[str, np.ndarray]:
    out = {}
    for split in SPLITS:
        for part in ("x", "y"):
            if f"{part}_{split}" not in arrays:
                raise BuildError(f"{where}: missing array '{part}_{split}' (needs x_/y_ train, val, test)")
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if len(x) != len(y):
            raise BuildError(f"{where}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if not len(x):
            raise BuildError(f"{where}: split '{split}' is empty")
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x.astype(np.float64)).all():
            raise BuildError(f"{where}: x_{split} must be finite numbers")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise BuildError(f"{where}: y_{split} must be one integer class index per sample, got shape "
                             f"{y.shape} of {y.dtype}")
        if y.min() < 0 or y.max() >= len(recipe.labels):
            raise BuildError(f"{where}: y_{split} has labels outside 0..{len(recipe.labels) - 1} "
                             f"(the recipe has {len(recipe.labels)} labels)")
        out[f"x_{split}"], out[f"y_{split}"] = x.astype(np.float32), y.astype(np.int32)
    shapes = {out[f"x_{s}"].shape[1:] for s in SPLITS}
    if len(shapes) != 1:
        raise BuildError(f"{where}: the splits' samples differ in shape: {sorted(shapes)}")
    return out


def read_class_folder(recipe, folder: Path, split_all: bool = True) -> dict[str, np.ndarray]:
    """A folder with one subfolder per label, as arrays per split (70/15/15 by a hash of the file name)."""
    from PIL import Image, UnidentifiedImageError

    size = recipe.keras.image_size
    if size < 8:
        raise BuildError(f"{recipe.source}: field 'keras.image_size' must be given (at least 8) for a folder "
                         f"of images")
    parts = {s: ([], []) for s in SPLITS}
    for label, name in enumerate(recipe.labels):
        sub = folder / name
        files = sorted(p for p in sub.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if sub.is_dir() else []
        if not files:
            raise BuildError(f"{sub}: no images for label {name!r}")
        for path in files:
            try:
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except (OSError, UnidentifiedImageError) as e:
                raise BuildError(f"{path}: not a readable image ({e})") from None
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            bucket = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16) % 100
            split = "train" if bucket < 70 else "val" if bucket < 85 else "test"
            parts[split][0].append(np.asarray(image, np.float32) / 255.0)
            parts[split][1].append(label)
    arrays = {}
    for split, (xs, ys) in parts.items():
        if not xs:
            raise BuildError(f"{folder}: split '{split}' got no images (too few files to split 70/15/15)")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.stack(xs), np.array(ys, np.int32)
    return arrays
