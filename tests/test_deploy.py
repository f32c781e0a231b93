"""`invoke deploy`: a model trained elsewhere (made here by the test, not by `invoke build`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from npubuild.deploy import deploy
from npubuild.errors import BuildError

from .conftest import ROOT, TARGET, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small CNN of the user's own, as full-INT8, float and dynamic-range TFLite files."""
    from npubuild.tfenv import import_tf

    tf, keras = import_tf(seed=3)
    keras.backend.clear_session()
    net = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                            keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(5)])
    folder = tmp_path_factory.mktemp("user models")
    rng = np.random.default_rng(0)
    spec = tf.TensorSpec([1, 32, 32, 1], tf.float32)
    concrete = tf.function(lambda x: net(x)).get_concrete_function(spec)

    def convert(kind):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], net)
        if kind != "float":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if kind == "int8":
            converter.representative_dataset = lambda: ([rng.standard_normal((1, 32, 32, 1)).astype(np.float32)]
                                                        for _ in range(20))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
        path = folder / f"my {kind} net.tflite"
        path.write_bytes(converter.convert())
        return path

    return {kind: convert(kind) for kind in ("int8", "float", "dynamic")}


def test_int8_model_gets_assets_and_a_report(tmp_path, models):
    root = make_project(tmp_path / "project")
    reports = deploy(root, tflite=models["int8"], target=TARGET, name="mynet", log=lambda s: None)
    folder = root / "firmware_assets" / TARGET / "mynet"
    for name in ("mynet_model.c", "mynet_model.h", "mynet_meta.h", "mynet_ops.h", "mynet_golden.c",
                 "memory_report.json", "memory_report.md", "integration.md"):
        assert (folder / name).is_file(), name
    (model,) = reports[TARGET]["models"]
    assert model["technique"] == "deployed" and model["npu_ops"] > 0 and model["flash_bytes"] > 0
    assert model["accuracy"] == {"fp32": None, "int8": None}
    assert json.loads((folder / "memory_report.json").read_text())["total"]["fits"] is True
    cc = shutil.which("cc") or shutil.which("gcc")
    main = tmp_path / "main.c"
    main.write_text('#include "mynet_model.h"\n#include "mynet_meta.h"\n#include "mynet_golden.h"\n'
                    "int main(void) { return (int)(mynet_model_len == 0) + MYNET_GOLDEN_COUNT - 3; }\n")
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main),
                           str(folder / "mynet_model.c"), str(folder / "mynet_golden.c"), "-o", str(tmp_path / "a")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([str(tmp_path / "a")]).returncode == 0
    # a file Vela already compiled is recognised and packaged as it is
    compiled = next((root / "build" / "deploy" / "mynet").glob(f"*/vela/{TARGET}/mynet_vela.tflite"))
    lines: list[str] = []
    deploy(root, tflite=compiled, target=TARGET, name="mynet_compiled", log=lines.append)
    assert any("already compiled by Vela: packaged as it is" in line for line in lines)
    array = (root / "firmware_assets" / TARGET / "mynet_compiled" / "mynet_compiled_model.h").read_text()
    assert f"#define MYNET_COMPILED_MODEL_LEN {compiled.stat().st_size}u" in array


@pytest.mark.parametrize(("kind", "message"), [
    ("float", "a float model: the Ethos-U NPU needs full INT8"),
    ("dynamic", "needs full INT8"),
])
def test_float_or_dynamic_range_model_is_one_clear_line(tmp_path, models, kind, message):
    root = make_project(tmp_path / "project")
    with pytest.raises(BuildError) as err:
        deploy(root, tflite=models[kind], target=TARGET, log=lambda s: None)
    text = str(err.value)
    assert text.startswith(f"{models[kind]}: ") and message in text and "representative_dataset" in text
    assert "\n" not in text and not (root / "firmware_assets").exists()


def test_not_a_tflite_file_through_invoke(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    proc = subprocess.run([sys.executable, "-m", "invoke", "deploy", "--tflite", str(bogus), "--assets-dir",
                           str(tmp_path / "assets")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {bogus}: not a TFLite flatbuffer (no 'TFL3' identifier)"
