"""Full-INT8 post-training quantization to TFLite: int8 input and output, batch fixed to 1.

A dynamic batch dimension would leave SHAPE / STRIDED_SLICE / PACK operators
that Vela cannot place on the NPU, so the model is traced with batch 1.
"""

from __future__ import annotations

from pathlib import Path

from npubuild.config import Recipe
from npubuild.errors import BuildError
from npubuild.stages import atomic_output

REPRESENTATIVE_SAMPLES = 500
# What the converter prints on standard error on every full-INT8 conversion, without a severity.
CONVERTER_CHATTER = ("fully_quantize: ",)


def convert_to_int8(recipe: Recipe, model, features: Path, out: Path, seed: int,
                    quantization_aware: bool = False) -> None:
    """Post-training quantization with representative data from the training split, or,
    for a quantization-aware trained model, conversion with the ranges it learned.
    `quantization_aware` is recorded for the cache; the converter reads the fake-quant ops itself.

    A model with several outputs (one per head) keeps them; the TFLite file may order
    them differently, see `output_order`."""
    from npubuild.kinds import get_kind
    from npubuild.tfenv import import_tf, log_level, native_messages

    tf, _ = import_tf(seed=seed)
    representative = get_kind(recipe.kind).representative(recipe, features, REPRESENTATIVE_SAMPLES, seed)

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Needed for full-INT8 even after QAT (the converter asks for it); QAT's learned ranges take precedence.
    converter.representative_dataset = lambda: ([row[None, ...]] for row in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        with native_messages(log_level(), CONVERTER_CHATTER):
            flatbuffer = converter.convert()
    except Exception as e:  # the converter's errors are long MLIR dumps: keep the line naming the op
        raise BuildError(f"{out.name}: the model cannot be made full INT8: {conversion_problem(str(e))}") from None
    with atomic_output(out) as f:
        f.write(flatbuffer)


def conversion_problem(message: str) -> str:
    """The line of a converter error that names the operator (and, in its location, the layer)."""
    import re

    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"'[\w.]+' op|op is neither|is not supported|failed to legalize|unsupported", line, re.I):
            return line[:300]
    return lines[0][:300] if lines else "conversion failed"
