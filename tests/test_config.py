"""Targets and recipes load into frozen dataclasses; each problem is one line naming file and field;
`invoke fit --apply` edits a recipe file line by line."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from npubuild.config import edit_recipe, load_recipe, load_target, resolve_targets
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
    assert t.models_run == "one_at_a_time" and t.memory["sram"].region.startswith("ISRAM0")


@pytest.mark.parametrize(("old", "new", "field"), [
    # unknown key, at the top and inside a memory region
    ('memory_mode = "Shared_Sram"', 'memory_mode = "Shared_Sram"\ncolour = "blue"', "colour"),
    ("ml_share = 1.0", "ml_share = 1.0\nwait_states = 2", "memory.sram.wait_states"),
    ("[memory.flash]", "[memory.eeprom]", "memory.eeprom"),
    # missing field
    ('memory_mode = "Shared_Sram"\n', "", "memory_mode"),
    ("bytes = 2_097_152\n", "", "memory.sram.bytes"),
    # wrong type or value
    ('accelerator = "ethos-u55-128"', 'accelerator = "ethos-u99-1"', "accelerator"),
    ("bytes = 2_097_152", 'bytes = "2 MiB"', "memory.sram.bytes"),
    ("ml_share = 1.0", "ml_share = 1.5", "memory.sram.ml_share"),
    ('models_run = "one_at_a_time"', 'models_run = "sometimes"', "models_run"),
    # a system config of another NPU family than the accelerator
    ('system_config = "Ethos_U55_High_End_Embedded"', 'system_config = "Ethos_U65_High_End"', "system_config"),
    ('system_config = "Ethos_U55_High_End_Embedded"', 'system_config = "Ethos_U85_SYS_Flash_High"',
     "system_config"),
    # names Vela's .ini does not have
    ('system_config = "Ethos_U55_High_End_Embedded"', 'system_config = "Ethos_U55_Turbo"', "system_config"),
    ('memory_mode = "Shared_Sram"', 'memory_mode = "Half_Sram"', "memory_mode"),
    # a memory mode the system config cannot host: Dedicated_Sram puts the arena in flash here
    ('memory_mode = "Shared_Sram"', 'memory_mode = "Dedicated_Sram_384KB"', "memory_mode"),
    # Vela's timings would use another clock than the board's
    ("npu_clock_hz = 500_000_000", "npu_clock_hz = 400_000_000", "npu_clock_hz"),
    ('model_section = ".rodata.npu_model"', 'model_section = ".rodata.npu_model"\nvela_config = "nope.ini"',
     "vela_config"),
])
def test_bad_target_names_file_and_field(tmp_path, old, new, field):
    path = write_target(tmp_path, TARGET, variant(old, new))
    with pytest.raises(BuildError) as err:
        load_target(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and f"'{field}'" in message and "\n" not in message


def test_dram_arena_needs_a_dram_region(tmp_path):
    name = "corstone-300-u65-256"
    text = (ROOT / "targets" / f"{name}.toml").read_text()
    region = text[text.index("[memory.dram]"):text.index("[memory.flash]")]
    path = write_target(tmp_path, name, text.replace(region, ""))
    with pytest.raises(BuildError, match=r"missing field 'memory.dram' \(memory mode 'Dedicated_Sram_384KB'"):
        load_target(path)


def test_every_shipped_target_loads_and_places_memory():
    targets = {t.name: t for t in resolve_targets(ROOT, "all")}
    assert len(targets) >= 5
    assert {t.npu_family for t in targets.values()} == {"u55", "u65", "u85"}
    u65 = targets["corstone-300-u65-256"]
    assert (u65.arena_memory, u65.model_memory, u65.fast_memory) == ("dram", "dram", True)
    assert u65.sram_budget_bytes == 384 * 1024
    u55 = targets[TARGET]
    assert (u55.arena_memory, u55.model_memory, u55.fast_memory) == ("sram", "flash", False)
    assert (u55.sram_budget_bytes, u55.flash_budget_bytes) == (2 * 1024 * 1024, 4 * 1024 * 1024)
    alif = targets["alif-ensemble-e7-hp"]
    assert alif.vela_ini == ROOT / "targets" / "alif-ensemble-e7.ini" and alif.npu_clock_hz == 400_000_000


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
    assert set(r.profiles) == {"smoke", "fast", "default"}


def test_a_profile_like_another_takes_its_fields_and_overrides_some():
    r = load_recipe(ROOT / "models" / "kws.toml")
    fast, default = r.profile("fast"), r.profile("default")
    changed = {"train_variants": 4, "epochs": 12, "prune_epochs": 2, "cluster_epochs": 1}
    assert fast.name == "fast" and {k: getattr(fast, k) for k in changed} == changed
    assert replace(fast, name="default", **{k: getattr(default, k) for k in changed}) == default
    for name in ("quality", "digits"):
        q = load_recipe(ROOT / "models" / f"{name}.toml")
        assert replace(q.profile("fast"), name="default") == q.profile("default")


@pytest.mark.parametrize("like", ['"fast"', '"nowhere"', "3"])
def test_a_profile_like_must_name_another_plain_profile(tmp_path, like):
    text = (ROOT / "models" / "kws.toml").read_text()
    old = '[profiles.fast]\nlike = "default"'
    assert old in text
    path = tmp_path / "kws.toml"
    path.write_text(text.replace(old, f"[profiles.fast]\nlike = {like}"))
    with pytest.raises(BuildError, match=f"^{path}: field 'profiles.fast.like' must name another profile"):
        load_recipe(path)


@pytest.mark.parametrize(("old", "new", "field"), [
    ('ship = "prune_cluster"', 'ship = "magic"', "ship"),
    ('architecture = "ds_cnn_l"', 'architecture = "resnet"', "architecture"),
    ("num_mfcc = 10", "num_mfcc = 10\nnum_cepstra = 3", "frontend.num_cepstra"),
    ("epochs = 1\n", "", "profiles.smoke.epochs"),
    ("batchnorm_samples = 64", "batchnorm_samples = -1", "profiles.smoke.batchnorm_samples"),
])
def test_bad_recipe_names_file_and_field(tmp_path, old, new, field):
    text = (ROOT / "models" / "kws.toml").read_text()
    assert old in text
    path = tmp_path / "kws.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(BuildError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and f"'{field}'" in str(err.value)


def test_edit_recipe_changes_its_lines_and_keeps_the_rest(tmp_path):
    path = tmp_path / "digits.toml"
    shutil.copy(ROOT / "models" / "digits.toml", path)
    shutil.copy(ROOT / "models" / "digits.py", tmp_path / "digits.py")
    before = path.read_text()
    edit_recipe(path, "pcqat", {"optimize.clusters": 4, "optimize.target_sparsity": 0.75})
    after = path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [('ship = "prune_cluster"', 'ship = "pcqat"'), ("target_sparsity = 0.5", "target_sparsity = 0.75"),
                       ("clusters = 8", "clusters = 4")]
    recipe = load_recipe(path)
    assert (recipe.ship, recipe.optimize.clusters, recipe.optimize.target_sparsity) == ("pcqat", 4, 0.75)
    # a key with a comment after it, and one missing from its table
    path.write_text(after.replace("clusters = 4", "clusters = 4  # few").replace("seed = 7\n", ""))
    edit_recipe(path, "pcqat", {"optimize.clusters": 16})
    assert "clusters = 16  # few" in path.read_text()
