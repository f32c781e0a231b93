"""Targets and recipes load into frozen dataclasses; each problem is one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from npubuild.config import load_recipe, load_target, resolve_targets
from npubuild.errors import BuildError

from .conftest import ROOT, TARGET

TARGET_FILE = ROOT / "targets" / f"{TARGET}.toml"


def write_target(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def variant(old: str, new: str, name: str = TARGET) -> str:
    text = TARGET_FILE.read_text()
    assert old in text
    return text.replace(old, new)


def test_shipped_target_loads():
    t = load_target(TARGET_FILE)
    assert (t.accelerator, t.system_config, t.memory_mode) == ("ethos-u55-128", "Ethos_U55_High_End_Embedded",
                                                               "Shared_Sram")
    assert t.npu_family == "u55"
    assert t.vela_params() == {"accelerator": "ethos-u55-128", "system_config": "Ethos_U55_High_End_Embedded",
                               "memory_mode": "Shared_Sram"}


@pytest.mark.parametrize(("old", "new", "field"), [
    ('memory_mode = "Shared_Sram"', 'memory_mode = "Shared_Sram"\ncolour = "blue"', "colour"),
    ('memory_mode = "Shared_Sram"\n', "", "memory_mode"),
    ('accelerator = "ethos-u55-128"', 'accelerator = "ethos-u99-1"', "accelerator"),
    ('system_config = "Ethos_U55_High_End_Embedded"', 'system_config = "Ethos_U65_High_End"', "system_config"),
    ("sram_budget_bytes = 2_097_152", 'sram_budget_bytes = "2 MiB"', "sram_budget_bytes"),
    ("sram_budget_bytes = 2_097_152", "sram_budget_bytes = 0", "sram_budget_bytes"),
])
def test_bad_target_names_file_and_field(tmp_path, old, new, field):
    path = write_target(tmp_path, TARGET, variant(old, new))
    with pytest.raises(BuildError) as err:
        load_target(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and f"'{field}'" in message and "\n" not in message


def test_target_not_toml(tmp_path):
    path = write_target(tmp_path, TARGET, "name = \n")
    with pytest.raises(BuildError, match="not valid TOML"):
        load_target(path)


def test_target_name_must_match_file(tmp_path):
    path = write_target(tmp_path, "other", TARGET_FILE.read_text())
    with pytest.raises(BuildError, match="'name'"):
        load_target(path)


def test_unknown_target_lists_known(tmp_path):
    with pytest.raises(BuildError, match=f"no such target .*{TARGET}"):
        resolve_targets(ROOT, "no-such-board")


def test_recipe_loads_with_reference_front_end():
    r = load_recipe(ROOT / "models" / "kws.toml")
    assert r.labels[:2] == ("_silence_", "_unknown_") and len(r.labels) == 12
    assert r.keywords == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    fe = r.frontend
    assert (fe.sample_rate, fe.window_samples, fe.stride_samples, fe.num_mfcc, fe.num_frames) == (16000, 640, 320, 10, 49)
    assert set(r.profiles) == {"smoke", "default"}


@pytest.mark.parametrize(("old", "new", "field"), [
    ('ship = "ptq"', 'ship = "magic"', "ship"),
    ('architecture = "ds_cnn_l"', 'architecture = "resnet"', "architecture"),
    ("num_mfcc = 10", "num_mfcc = 10\nnum_cepstra = 3", "frontend.num_cepstra"),
    ("epochs = 1\n", "", "profiles.smoke.epochs"),
])
def test_bad_recipe_names_file_and_field(tmp_path, old, new, field):
    text = (ROOT / "models" / "kws.toml").read_text()
    assert old in text
    path = tmp_path / "kws.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(BuildError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and f"'{field}'" in str(err.value)
