"""Your own Keras classifier as a model kind: a recipe of `kind = "keras"` names a saved tf_keras model
(or a function building one) and its data (`kinds/keras/user.py`); every recipe of the deployment tree
then applies to it, verified in the INT8 file, compiled per target, packaged and budgeted like the
built-in models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npubuild.kinds.base import DataPlan, Folder, ModelKind


class KerasClassifier(ModelKind):
    name = "keras"
    label_field = "labels"
    tables = ("keras",)
    metric_note = "Accuracy is top-1"
    folder_help = "an .npz with x_test and y_test (or all six arrays), or a folder with one subfolder per label"

    def check_recipe(self, recipe):
        if recipe.keras is None:
            return "keras", "is missing"
        return None

    def data_plan(self, recipe, profile, data_dir, out, log) -> DataPlan:
        from npubuild.kinds.keras import user

        source = data_dir if data_dir is not None else recipe.keras.data
        digest = (user.source_digest(recipe, str(source), "data") if data_dir is None
                  else user.source_digest(recipe, str(Path(data_dir).resolve())))
        params = {"recipe": recipe.name, "labels": recipe.labels, "data": "builtin" if data_dir is None else "dir",
                  "digest": digest, "image_size": recipe.keras.image_size}

        def action() -> None:
            from npubuild.stages import atomic_output
            from npubuild.terminal import say

            arrays = user.load_arrays(recipe, source, from_recipe=data_dir is None)
            say("  " + ", ".join(f"{s}: {len(arrays[f'y_{s}'])} samples" for s in user.SPLITS)
                + f", input {arrays['x_train'].shape[1:]}")
            with atomic_output(out) as f:
                np.savez(f, **arrays)

        return DataPlan(params, ("numpy", "pillow"), action, ("kinds.keras.user",))

    def model_params(self, recipe):
        from npubuild.kinds.keras.user import source_digest

        return {"keras_model": recipe.keras.model, "keras_model_digest": source_digest(recipe, recipe.keras.model, "model")}

    def build_model(self, recipe):
        from npubuild.kinds.keras.user import load_model

        return load_model(recipe)

    def read_folder(self, recipe, data_dir, features) -> Folder:
        """`invoke evaluate`: an .npz (x_test/y_test, or the six arrays: their test split) or a class folder."""
        from npubuild.kinds.keras import user

        if data_dir.is_dir() and not any(data_dir.glob("*.npz")):
            arrays = user.read_class_folder(recipe, data_dir)
            x = np.concatenate([arrays[f"x_{s}"] for s in user.SPLITS])
            y = np.concatenate([arrays[f"y_{s}"] for s in user.SPLITS])
            return Folder(x, y.astype(np.int64), read=len(y), selection="every image of the label folders")
        npz = data_dir if data_dir.is_file() else sorted(data_dir.glob("*.npz"))[0]
        with np.load(npz, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        if "x_test" not in arrays:
            from npubuild.errors import BuildError

            raise BuildError(f"{npz}: missing array 'x_test'")
        checked = user.check_arrays(recipe, npz, {f"{p}_{s}": arrays[f"{p}_test"] for s in user.SPLITS
                                                  for p in ("x", "y")})
        return Folder(checked["x_test"], checked["y_test"].astype(np.int64), read=len(checked["y_test"]),
                      selection=f"x_test / y_test of {npz.name}")
