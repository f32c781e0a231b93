"""DS-CNN-L, built with Keras 2 (`tf_keras`) so tfmot can wrap every layer."""

from __future__ import annotations

from npubuild.tfenv import import_tf


def ds_cnn_l(num_frames: int, num_mfcc: int, num_classes: int):
    """DS-CNN-L as in Arm's ML-Zoo ("ds_cnn_large"): 422,844 parameters for 49x10 input, 12 classes.

    The flat MFCC input is reshaped by a Keras layer (tfmot cannot wrap tf.reshape).
    BatchNormalization uses momentum 0.95 rather than Keras' 0.99: the first
    convolution's outputs have a variance near 0.01 at initialisation, and with
    0.99 the moving variance (starting at 1) needs several epochs to get there, so
    the model in inference mode predicts one class for several epochs.
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
