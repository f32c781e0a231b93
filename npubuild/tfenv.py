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

    _without_thread_spinning()
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return tf, keras


def _without_thread_spinning() -> None:
    """TensorFlow's thread pools without spinning: an idle worker sleeps at once instead of spinning
    on the core first. Alone, a model trains as fast either way; beside another model's process
    (models build side by side), the spinning threads of one take the cores from the other. How a
    thread waits changes no arithmetic: the weights are the same bit for bit. Set before TensorFlow
    starts its pools (its first op); a process where TensorFlow already runs keeps the pools it has."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    if ctx._context_handle is not None:
        return
    config = config_pb2.ConfigProto()
    if ctx._config is not None:
        config.CopyFrom(ctx._config)
    config.experimental.disable_thread_spinning = True
    ctx._config = config


def no_autotune(dataset):
    """`dataset` with tf.data's autotuning off. Autotuning keeps a thread that re-plans the pipeline at
    growing intervals (up to a minute), and an iterator's destructor waits for that thread to wake:
    Keras's `fit` and `predict` can sit up to a minute after their last batch deleting their iterator.
    The project's pipelines are fixed (arrays in memory, a prefetch of two batches): nothing is left
    to tune."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def array_batches(arrays, batch_size: int):
    """Arrays in memory (a tuple nests: inputs, then targets) as batches in order, without autotuning
    (`no_autotune`): what Keras makes of numpy arrays, less the wait when it is deleted."""
    import tensorflow as tf

    def nested(value):  # a list would be stacked into one tensor; a tuple is a structure (one target per head)
        return tuple(nested(v) for v in value) if isinstance(value, (list, tuple)) else value

    return no_autotune(tf.data.Dataset.from_tensor_slices(nested(arrays)).batch(batch_size))
