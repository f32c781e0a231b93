"""Import TensorFlow the one way this project uses it: Keras 2 (`tf_keras`), deterministic ops.

tfmot 0.8.1 works only with Keras 2, so TF_USE_LEGACY_KERAS must be set before
TensorFlow is first imported. Imported lazily by the stages that need it, so a
build with nothing to do never loads TensorFlow.
"""

from __future__ import annotations

import os


def import_tf(seed: int | None = None):
    """Return (tf, keras) with Keras 2 selected and, given a seed, everything seeded."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU build machine: skip the GPU probe
    import tensorflow as tf
    import tf_keras as keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return tf, keras
