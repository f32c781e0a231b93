"""The vectorized cluster-preserving QAT gives tfmot's own results, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from npubuild.tfenv import import_tf

pytestmark = pytest.mark.slow


def _clustered_model(keras, rng, zeros: bool):
    """Conv2D layers whose output channels each hold the same number of distinct values
    (what clustering leaves, and what sends tfmot down its per-channel path)."""
    keras.backend.clear_session()
    model = keras.Sequential([
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(6, 1, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            values = rng.normal(0, 0.3, (kernel.shape[-1], 4)).astype(np.float32)
            if zeros:
                values[:, 0] = 0.0
            pick = rng.integers(0, 4, kernel.shape)
            pick.reshape(-1, kernel.shape[-1])[:4] = np.arange(4)[:, None]  # every channel uses all 4
            channel = np.broadcast_to(np.arange(kernel.shape[-1]), kernel.shape)
            layer.set_weights([values[channel, pick], bias])
    return model


def _fine_tuned(scheme: str, stock: bool, zeros: bool):
    from npubuild.fast_cqat import VectorizedPerChannelClustering
    from npubuild.optimize import apply_qat

    tf, keras = import_tf(seed=7)
    model = _clustered_model(keras, np.random.default_rng(0), zeros)
    wrapped = apply_qat(model, scheme, stock_cqat=stock)
    fast_layers = sum(isinstance(v, VectorizedPerChannelClustering)
                      for layer in wrapped.layers
                      for (_, _, quantizer_vars) in getattr(layer, "_weight_vars", [])
                      for v in quantizer_vars.values())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    wrapped.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return [w.numpy() for w in wrapped.weights], fast_layers


@pytest.mark.parametrize("scheme", ["cqat", "pcqat"])
def test_vectorized_clustering_matches_tfmot(scheme):
    stock, stock_fast = _fine_tuned(scheme, True, zeros=scheme == "pcqat")
    fast, fast_layers = _fine_tuned(scheme, False, zeros=scheme == "pcqat")
    assert stock_fast == 0
    assert fast_layers == 2  # both Conv2D layers took the vectorized path
    assert len(stock) == len(fast)
    for a, b in zip(stock, fast, strict=True):
        np.testing.assert_array_equal(a, b)
