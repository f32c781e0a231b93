"""Model architectures, built with Keras 2 (`tf_keras`) so tfmot can wrap every layer."""

from __future__ import annotations

from npubuild.config import Recipe
from npubuild.tfenv import import_tf


def ds_cnn_l(num_frames: int, num_mfcc: int, num_classes: int):
    """DS-CNN-L as in Arm's ML-Zoo ("ds_cnn_large"): 422,844 parameters for 49x10 input, 12 classes.

    The flat MFCC input is reshaped by a Keras layer (tfmot cannot wrap tf.reshape).
    BatchNormalization uses momentum 0.95 rather than Keras' 0.99: the first
    convolution's outputs have a variance near 0.01 at initialisation, and with
    0.99 the moving variance (starting at 1) needs several epochs to get there, so
    the model in inference mode predicts one class for the first 5-6 epochs.
    """
    _, keras = import_tf()
    layers = keras.layers
    filters = 276
    bn = dict(momentum=0.95)
    inputs = keras.Input(shape=(num_frames * num_mfcc,), name="mfcc")
    x = layers.Reshape((num_frames, num_mfcc, 1))(inputs)
    x = layers.Conv2D(filters, (10, 4), strides=(2, 1), padding="same", use_bias=True)(x)
    x = layers.BatchNormalization(**bn)(x)
    x = layers.ReLU()(x)
    for block in range(5):
        stride = (2, 2) if block == 0 else (1, 1)
        x = layers.DepthwiseConv2D((3, 3), strides=stride, padding="same", use_bias=True)(x)
        x = layers.BatchNormalization(**bn)(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, (1, 1), padding="same", use_bias=True)(x)
        x = layers.BatchNormalization(**bn)(x)
        x = layers.ReLU()(x)
    x = layers.AveragePooling2D(pool_size=(x.shape[1], x.shape[2]))(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="ds_cnn_l")


def mobilenet_v2_heads(height: int, width: int, alpha: float, heads: tuple[str, ...]):
    """DermAssist's shape: a MobileNetV2 feature extractor (Keras applications, no pretrained
    weights: nothing is downloaded) and one Dense(1, sigmoid) head per quality issue, each
    its own output named after the issue.

    BatchNormalization momentum 0.9 instead of the application's 0.999, for the same
    reason as DS-CNN-L's: trained from scratch for a few thousand steps, 0.999 leaves the
    moving statistics far from the batch statistics and inference at chance.
    """
    _, keras = import_tf()
    inputs = keras.Input(shape=(height, width, 3), name="image")
    backbone = keras.applications.MobileNetV2(input_tensor=inputs, alpha=alpha, include_top=False,
                                              weights=None, pooling="avg")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    features = backbone.output
    outputs = [keras.layers.Dense(1, activation="sigmoid", name=head)(features) for head in heads]
    return keras.Model(inputs, outputs, name="mobilenet_v2_heads")


def build_model(recipe: Recipe):
    # Layer names come from per-process counters; start them afresh so every build names
    # the layers (and so the TFLite tensors) the same way.
    _, keras = import_tf()
    keras.backend.clear_session()
    if recipe.architecture == "ds_cnn_l":
        fe = recipe.frontend
        return ds_cnn_l(fe.num_frames, fe.num_mfcc, len(recipe.labels))
    if recipe.architecture == "mobilenet_v2_heads":
        im = recipe.image
        return mobilenet_v2_heads(im.height, im.width, im.alpha, recipe.heads)
    raise ValueError(f"unknown architecture {recipe.architecture}")
