"""`invoke deploy`: a model trained elsewhere (made here by the test, not by `invoke build`)."""

from __future__ import annotations

import json
import shutil
import struct
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
        if kind in ("int8", "16x8"):
            converter.representative_dataset = lambda: ([rng.standard_normal((1, 32, 32, 1)).astype(np.float32)]
                                                        for _ in range(20))
        if kind == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
        if kind == "16x8":  # int16 activations, int8 weights
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int16
        path = folder / f"my {kind} net.tflite"
        path.write_bytes(converter.convert())
        return path

    return {kind: convert(kind) for kind in ("int8", "float", "dynamic", "16x8")}


@pytest.fixture(scope="module")
def depthwise_int8(tmp_path_factory):
    """A full-INT8 depthwise net (per-channel filter quantization, as in TFLM's person-detection model)."""
    from npubuild.tfenv import import_tf

    tf, keras = import_tf(seed=4)
    keras.backend.clear_session()
    net = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.DepthwiseConv2D(3, activation="relu"),
                            keras.layers.Conv2D(4, 1), keras.layers.Flatten(), keras.layers.Dense(5)])
    concrete = tf.function(lambda x: net(x)).get_concrete_function(tf.TensorSpec([1, 16, 16, 3], tf.float32))
    rng = np.random.default_rng(1)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.standard_normal((1, 16, 16, 3)).astype(np.float32)]
                                                for _ in range(10))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("depthwise") / "depthwise.tflite"
    path.write_bytes(converter.convert())
    return path


def _graph(data):
    from ethosu.vela.tflite.Model import Model

    model = Model.GetRootAsModel(data, 0)
    return model, model.Subgraphs(0)


def with_depthwise_bias_quantized_dimension_3(src, dst):
    """TFLM's person-detection fault: 1-D depthwise biases whose quantization says quantized_dimension 3
    (LiteRT: "quantized_dimension must be in range [0, 1). Was 3."; TFLM does not read it). Rewritten
    with the object API of the TFLite schema that LiteRT ships (the field is absent, so not patchable)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    graph = model.subgraphs[0]
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.DEPTHWISE_CONV_2D:
            graph.tensors[op.inputs[2]].quantization.quantizedDimension = 3
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def with_depthwise_filter_quantized_dimension_0(src, dst):
    """Per-channel depthwise filter scales said to run along dimension 0 (size 1) instead of 3: LiteRT
    and TFLM both refuse it, Vela compiles it. Patched in place (the int32 field is stored: 3 != 0)."""
    data = bytearray(src.read_bytes())
    model, graph = _graph(data)
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() == 4:  # DEPTHWISE_CONV_2D
            quant = graph.Tensors(op.Inputs(1)).Quantization()
            field = quant._tab.Offset(16)  # quantized_dimension: field 6 of QuantizationParameters
            assert field and quant.QuantizedDimension() == 3
            struct.pack_into("<i", data, quant._tab.Pos + field, 0)
    dst.write_bytes(bytes(data))
    return dst


def with_tensor_names(src, dst, names):
    """`src` with tensors renamed in place (each new name as long as the old one), as older Vela named them."""
    data = bytearray(src.read_bytes())
    _, graph = _graph(data)
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        old = tensor.Name().decode()
        if old in names:
            new = names[old].encode()
            assert len(new) == len(old)
            start = tensor._tab.Vector(tensor._tab.Offset(10))  # name: field 3 of Tensor
            assert data[start:start + len(new)] == old.encode()
            data[start:start + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


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


def test_a_deployed_model_beside_a_built_one_builds_reports_and_summarises(tmp_path, models, smoke_project):
    """A target folder holding a deployed model (no accuracy) and a built one: the next build's report
    and summary show the deployed model with "-" for its accuracy."""
    from npubuild.pipeline import build

    built = smoke_project[0]
    root = make_project(tmp_path / "project")
    for part in ("build", "firmware_assets"):  # the session's smoke build, as it was left
        shutil.copytree(built / part, root / part, ignore=shutil.ignore_patterns(".lock"))
    deploy(root, tflite=models["int8"], target=TARGET, name="mynet", log=lambda s: None)
    lines: list[str] = []
    summary = build(root, model="kws", target=TARGET, profile="smoke", log=lines.append)
    names = [m["name"] for m in summary.reports[TARGET]["models"]]
    assert "kws" in names and "mynet" in names
    rows = {line.split()[1]: line.split() for line in lines[-1].splitlines() if line.startswith(TARGET)}
    assert rows["mynet"][5] == "-" and float(rows["kws"][5]) >= 0.0  # INT8 accuracy column
    assert "| mynet |" in (root / "firmware_assets" / TARGET / "memory_report.md").read_text()
    assert (root / "firmware_assets" / "index.html").is_file()


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


def test_file_litert_rejects_gets_golden_vectors_from_tflm(tmp_path, depthwise_int8):
    """Fault: TFLM's person-detection model; Vela compiles it, LiteRT refuses to load it."""
    from npubuild import golden_vectors
    from npubuild.assets import io_tensors
    from npubuild.int8_runner import Int8Runner

    model = with_depthwise_bias_quantized_dimension_3(depthwise_int8, tmp_path / "person like.tflite")
    with pytest.raises(BuildError, match=r"quantized_dimension must be in range \[0, 1\)\. Was 3"):
        Int8Runner(model)
    root = make_project(tmp_path / "project")
    lines: list[str] = []
    deploy(root, tflite=model, target=TARGET, name="person", log=lines.append)
    said = [line for line in lines if "golden" in line]
    assert len(said) == 1 and "golden vectors from TFLM's interpreter" in said[0] and "Was 3" in said[0]
    folder = root / "firmware_assets" / TARGET / "person"
    golden_c = (folder / "person_golden.c").read_text()
    # the same numbers as LiteRT gives for the file before the rewrite (the bias field is all that changed)
    expected = golden_vectors.random_golden(depthwise_int8, io_tensors(depthwise_int8)[0])
    for row in (*expected["inputs"], *expected["outputs"]):
        assert golden_vectors.c_rows(row) in golden_c
    assert "TFLM's interpreter" in (folder / "person_golden.h").read_text()


def test_file_no_host_runner_takes_is_deployed_without_golden_vectors(tmp_path, depthwise_int8):
    model = with_depthwise_filter_quantized_dimension_0(depthwise_int8, tmp_path / "odd.tflite")
    root = make_project(tmp_path / "project")
    lines: list[str] = []
    deploy(root, tflite=model, target=TARGET, name="odd", log=lines.append)
    said = [line for line in lines if "golden" in line]
    assert len(said) == 1 and said[0].startswith("[deploy odd] no golden vectors: LiteRT cannot run it: ")
    assert "TFLM cannot run it: " in said[0] and "\n" not in said[0]
    folder = root / "firmware_assets" / TARGET / "odd"
    assert not list(folder.glob("*_golden.*")) and (folder / "odd_model.c").is_file()
    notes = (folder / "integration.md").read_text()
    assert "No golden vectors: the host could not run the model (LiteRT cannot run it: " in notes
    assert "odd_golden" not in notes


def test_file_compiled_by_older_vela_is_packaged(tmp_path, models):
    """Older Vela named the Ethos-U operator's tensors otherwise (`_split_1_flash`, `_split_1_scratch`, ...)."""
    root = make_project(tmp_path / "project")
    deploy(root, tflite=models["int8"], target=TARGET, name="net", log=lambda s: None)
    compiled = next((root / "build" / "deploy" / "net").glob(f"*/vela/{TARGET}/net_vela.tflite"))
    older = with_tensor_names(compiled, tmp_path / "older.tflite", {
        "ethos_u_command_stream": "_split_1_command_strea", "read_only": "_sp_flash", "scratch": "_scratc"})
    assert b"scratch" not in older.read_bytes() and b"read_only" not in older.read_bytes()
    lines: list[str] = []
    reports = deploy(root, tflite=older, target=TARGET, name="older", log=lines.append)
    assert any("already compiled by Vela: packaged as it is" in line for line in lines)
    folder = root / "firmware_assets" / TARGET
    assert reports[TARGET]["models"][0]["arena_bytes"] == json.loads(
        (folder / "net" / "memory_report.json").read_text())["models"][0]["arena_bytes"]
    meta = {name: [ln for ln in (folder / name / f"{name}_meta.h").read_text().splitlines() if "ARENA_SIZE" in ln]
            for name in ("net", "older")}
    assert meta["older"] == [ln.replace("NET_", "OLDER_") for ln in meta["net"]]
    # an Ethos-U operator without the driver's four leading inputs: one line saying what is missing
    data = bytearray(older.read_bytes())
    model, graph = _graph(data)
    op = graph.Operators(0)
    assert model.OperatorCodes(op.OpcodeIndex()).CustomCode() == b"ethos-u" and op.InputsLength() >= 4
    struct.pack_into("<I", data, op._tab.Vector(op._tab.Offset(6)) - 4, 2)  # inputs: field 1 of Operator
    (tmp_path / "cut.tflite").write_bytes(bytes(data))
    with pytest.raises(BuildError) as err:
        deploy(root, tflite=tmp_path / "cut.tflite", target=TARGET, name="cut", log=lambda s: None)
    assert str(err.value).endswith(": its Ethos-U operator has 2 inputs; the driver needs at least 4 (command "
                                   "stream, weights, scratch, fast scratch)")


def test_16x8_model_gets_int16_assets(tmp_path, models):
    from npubuild import golden_vectors
    from npubuild.assets import io_tensors
    from npubuild.int8_runner import run_tflm

    root = make_project(tmp_path / "project")
    lines: list[str] = []
    reports = deploy(root, tflite=models["16x8"], target=TARGET, name="net16", log=lines.append)
    (model,) = reports[TARGET]["models"]
    assert model["npu_ops"] > 0 and model["cpu_ops"] == 0
    folder = root / "firmware_assets" / TARGET / "net16"
    inp, (out,) = io_tensors(models["16x8"])
    assert inp.dtype == out.dtype == "int16" and inp.zero_point == 0
    meta = (folder / "net16_meta.h").read_text()
    assert "/* Input tensor: int16 [1, 32, 32, 1]" in meta and "/* Output tensor: int16 [1, 5] */" in meta
    assert f"#define NET16_INPUT_SCALE {inp.scale}f" in meta and "#define NET16_INPUT_ZERO_POINT (0)" in meta
    header = (folder / "net16_golden.h").read_text()
    assert "extern const int16_t net16_golden_input[" in header and "extern const int16_t net16_golden_output[" in header
    expected = golden_vectors.random_golden(models["16x8"], inp)
    assert expected["inputs"].dtype == np.int16 and np.abs(expected["inputs"]).max() > 128
    golden_c = (folder / "net16_golden.c").read_text()
    for row in (*expected["inputs"], *expected["outputs"]):
        assert golden_vectors.c_rows(row) in golden_c
    assert "data.i16" in (folder / "integration.md").read_text()
    # TFLM (what firmware runs) is within one step of these LiteRT numbers, as the notes say
    tflm = np.concatenate([o.reshape(3, -1) for o in run_tflm(models["16x8"], expected["inputs"])], axis=1)
    assert np.abs(tflm.astype(int) - expected["outputs"]).max() <= 1
    assert model["io_bytes"] == 2 * (32 * 32 + 5)
    cc = shutil.which("cc") or shutil.which("gcc")
    main = tmp_path / "main.c"
    main.write_text('#include "net16_golden.h"\n#include "net16_meta.h"\n'
                    "int main(void) { return net16_golden_input[0][0] == 0 && NET16_GOLDEN_COUNT != 3; }\n")
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", f"-I{folder}", str(main),
                           str(folder / "net16_golden.c"), "-o", str(tmp_path / "a")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
