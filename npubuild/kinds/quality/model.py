"""MobileNetV2 with one sigmoid head per quality issue, built with Keras 2 (`tf_keras`)."""

from __future__ import annotations

from npubuild.tfenv import import_tf


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
