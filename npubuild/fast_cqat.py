"""Cluster-preserving QAT (CQAT/PCQAT) without tfmot 0.8.1's per-channel Python loop.

Why it was slow: when every output channel of a Conv2D kernel already holds its own
set of cluster values (all of DS-CNN-L's 1x1 convolutions after clustering), tfmot
switches the layer to `ClusteringAlgorithmPerChannel`, whose `get_pulling_indices`
and `get_clustered_weight` loop over output channels in Python. Every channel adds
its own slice/argmin/gather ops to the training graph: a graph of tens of thousands of
ops for DS-CNN-L (plain QAT's has a few thousand), slow to trace and slow to run.

What changes here: the same two functions as single broadcast ops (argmin over a
[..., C, K] distance tensor; one batched gather), with the same tie-breaking
(first minimum) and the same straight-through gradient, so the fine-tuned weights
and the INT8 file are the same as with the stock scheme (a test checks the weights
bit for bit). Channels-first layers and non-SUM gradient aggregation keep tfmot's
own code.

Import only where TensorFlow is already wanted: it imports tfmot.
"""

from __future__ import annotations

# ruff: noqa: E402
from npubuild.tfenv import import_tf

tf, _ = import_tf()  # Keras 2 must be selected before tfmot is imported

from tensorflow_model_optimization.python.core.clustering.keras import cluster_config, clustering_algorithm
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    cluster_preserve_quantize_registry as cpqr,
)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    default_8bit_cluster_preserve_quantize_scheme as cpqs,
)

_PerChannel = clustering_algorithm.ClusteringAlgorithmPerChannel


class VectorizedPerChannelClustering(_PerChannel):
    """Per-channel clustering of a channels-last kernel [H, W, I, C] with centroids [C, K]."""

    def _vectorizable(self) -> bool:
        return (self.data_format != "channels_first"
                and self.cluster_gradient_aggregation == cluster_config.GradientAggregation.SUM)

    def get_pulling_indices(self, weight):
        if not self._vectorizable():
            return super().get_pulling_indices(weight)
        distance = tf.abs(tf.expand_dims(weight, -1) - self.cluster_centroids)  # [H, W, I, C, K]
        return tf.argmin(distance, axis=-1)

    def get_clustered_weight(self, pulling_indices, original_weight):
        if not self._vectorizable():
            return super().get_clustered_weight(pulling_indices, original_weight)
        by_channel = tf.transpose(pulling_indices, perm=(3, 0, 1, 2))           # [C, H, W, I]
        clustered = tf.gather(self.cluster_centroids, by_channel, batch_dims=1)  # [C, H, W, I]
        clustered = tf.transpose(clustered, perm=(1, 2, 3, 0))
        return self.add_gradient_to_original_weight(clustered, tf.identity(original_weight))


def _vectorize(result: dict) -> dict:
    impl = result.get(cpqr.CLUSTERING_IMPL)
    if type(impl) is _PerChannel:
        result[cpqr.CLUSTERING_IMPL] = VectorizedPerChannelClustering(
            impl.cluster_centroids, impl.cluster_gradient_aggregation, impl.data_format)
    return result


class _FastWeightsQuantizer(cpqr.ClusterPreserveDefault8BitWeightsQuantizer):
    def build(self, tensor_shape, name, layer):
        return _vectorize(super().build(tensor_shape, name, layer))


class _FastConvWeightsQuantizer(cpqr.ClusterPreserveDefault8BitConvWeightsQuantizer):
    def build(self, tensor_shape, name, layer):
        return _vectorize(super().build(tensor_shape, name, layer))


class _FastRegistry(cpqr.Default8bitClusterPreserveQuantizeRegistry):
    def __init__(self, preserve_sparsity):
        super().__init__(preserve_sparsity)
        self._config_quantizer_map = {
            "Default8BitQuantizeConfig": _FastWeightsQuantizer(preserve_sparsity),
            "Default8BitConvQuantizeConfig": _FastConvWeightsQuantizer(preserve_sparsity),
        }


class FastClusterPreserveQuantizeScheme(cpqs.Default8BitClusterPreserveQuantizeScheme):
    """tfmot's Default8BitClusterPreserveQuantizeScheme with vectorized per-channel clustering."""

    def get_quantize_registry(self):
        return _FastRegistry(self.preserve_sparsity)
