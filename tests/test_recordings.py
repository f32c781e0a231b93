"""Keyword spotting on real recordings (`kinds/kws/recordings.py`): the released test set's layout, the
training renderings, the epochs that mix recordings with the voice bank, and a build that does it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from npubuild.config import load_recipe
from npubuild.errors import BuildError
from npubuild.kinds.kws import data as kws_data
from npubuild.kinds.kws import recordings

from .conftest import ROOT, TARGET, make_project
from .test_kws_data import write_wav

RECIPE = load_recipe(ROOT / "models" / "kws.toml")
FE = RECIPE.frontend


def released_layout(root, rng, speakers=("aaaa0001", "bbbb0002", "cccc0003")):
    """Keyword folders, `_unknown_/` and `_silence_/` as the released test set has them, no background
    folder; the lists put the second speaker in validation and the third in test."""
    for word in RECIPE.keywords:
        for s in speakers:
            write_wav(root / word / f"{s}_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000))
    for s in speakers:
        write_wav(root / "_unknown_" / f"bird_{s}_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000))
        write_wav(root / "_silence_" / f"{s}.wav", rng.uniform(-0.05, 0.05, 16000))
    for name, s in (("validation_list.txt", speakers[1]), ("testing_list.txt", speakers[2])):
        (root / name).write_text("\n".join(f"{w}/{s}_nohash_0.wav" for w in RECIPE.keywords) +
                                 f"\n_unknown_/bird_{s}_nohash_0.wav\n_silence_/{s}.wav\n")
    return root


def test_released_layout_takes_unknown_and_silence_folders(tmp_path):
    root = released_layout(tmp_path / "rec", np.random.default_rng(0))
    read = recordings.speech_commands_dataset(RECIPE, root)
    for split in ("train", "val", "test"):
        audio, labels = read.splits[split]
        names = [RECIPE.labels[i] for i in labels]
        # 10 keyword clips, the split's one unknown word, its silence clip (10% of 10 keywords: no top-up)
        assert sorted(names) == sorted([*RECIPE.keywords, "_unknown_", "_silence_"]), split
        silence = audio[names.index("_silence_")]
        assert 0.02 < np.abs(silence).max() <= 0.05 + 1e-4  # the recorded piece, not generated
    assert len(read.noise) == 1  # the training split's silence: the background for augmentation


def test_renderings_are_drawn_per_clip_and_do_not_depend_on_workers(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    t = np.arange(FE.clip_samples) / FE.sample_rate
    word = (0.4 * np.sin(2 * np.pi * 300 * t) * ((t > 0.3) & (t < 0.7))).astype(np.float32)
    audio = np.stack([np.roll(word, int(rng.integers(-2000, 2000))) for _ in range(10)])
    labels = np.array([RECIPE.labels.index("yes")] * 9 + [RECIPE.labels.index("_silence_")], np.int32)
    noise = [rng.uniform(-0.2, 0.2, 3 * FE.clip_samples).astype(np.float32)]
    one = recordings.render_recording(np.random.default_rng([5, 0]), audio[0], False, noise, FE.sample_rate)
    assert np.array_equal(one, recordings.render_recording(np.random.default_rng([5, 0]), audio[0], False, noise,
                                                           FE.sample_rate))
    assert not np.array_equal(one, recordings.render_recording(np.random.default_rng([5, 1]), audio[0], False,
                                                               noise, FE.sample_rate))
    assert one.shape == (FE.clip_samples,) and np.abs(one).max() <= 1.0
    monkeypatch.setattr(recordings, "CHUNK", 4)  # three chunks
    alone = recordings.render_training(RECIPE, audio, labels, noise, 3, workers=1)
    pooled = recordings.render_training(RECIPE, audio, labels, noise, 3, workers=2)
    assert alone.shape == (3, 10, FE.num_frames, FE.num_mfcc) and np.array_equal(alone, pooled)
    assert not np.array_equal(alone[0], alone[1])  # each rendering its own draws


def _features(path, n_real=10, n_bank=30, share=None, epoch=None):
    """A data file as the data stage writes one: renderings whose values tell row and rendering apart."""
    def rendering(n, offset, r):
        return np.broadcast_to((offset + np.arange(n) * 10 + r + 1.0)[:, None, None], (n, 49, 10)).astype(np.float32)

    arrays = {"x_train": rendering(n_real, 0, 0), "x_train_variants": np.stack([rendering(n_real, 0, 1)]),
              "y_train": np.arange(n_real) % 12, "mean": np.zeros(10, np.float32), "std": np.ones(10, np.float32)}
    if share is not None:
        arrays.update(x_bank=rendering(n_bank, 1000, 0), x_bank_variants=np.stack([rendering(n_bank, 1000, r)
                                                                                   for r in (1, 2)]),
                      y_bank=np.arange(n_bank) % 12, real_share=np.float32(share))
    if epoch is not None:
        arrays["epoch_samples"] = np.int64(epoch)
    np.savez(path, **arrays)
    return path


def _row_values(x):
    """The value each input row was made of (masks zero some of it)."""
    x = x.reshape(len(x), -1)
    return np.array([row[row != 0][0] for row in x])


def test_epochs_mix_recordings_and_bank_at_the_share(tmp_path):
    path = _features(tmp_path / "f.npz", share=0.5, epoch=36)  # 10 + 30 rows: an epoch is 40
    assert kws_data.epoch_samples(path, None) == 40 and kws_data.epoch_samples(path, np.arange(7)) == 7
    draw = kws_data.EpochInputs(path, None)
    seen = np.zeros(10, int)
    for epoch in range(4):
        x, rows = draw(epoch, np.random.default_rng(epoch))
        assert len(x) == len(rows) == 40
        real, bank = rows[rows < 10], rows[rows >= 10]
        assert len(real) == 20 and len(bank) == 20 and len(set(bank)) == 20  # the bank's without repeats
        seen += np.bincount(real, minlength=10)
        values = _row_values(x)
        expected = np.where(rows < 10, rows * 10 + epoch % 2 + 1, 1000 + (rows - 10) * 10 + epoch % 3 + 1)
        assert np.array_equal(values, expected)  # each input is its row at the source's rendering
    assert set(seen) == {8}  # recordings in shuffled passes: 80 draws of 10 clips, 8 each


def test_a_small_folder_alone_trains_epochs_of_the_built_in_size(tmp_path):
    path = _features(tmp_path / "f.npz", epoch=25)
    x, rows = kws_data.EpochInputs(path, None)(0, np.random.default_rng(0))
    assert len(x) == 25 and np.bincount(rows, minlength=10).min() >= 2
    builtin = _features(tmp_path / "b.npz")  # the built-in data: every row once, in order
    x = kws_data.EpochInputs(builtin, None)(1, np.random.default_rng(0))
    assert not isinstance(x, tuple) and np.array_equal(_row_values(x), np.arange(10) * 10 + 2)


def test_mix_settings_are_checked(tmp_path):
    text = (ROOT / "models" / "kws.toml").read_text()
    for line, field in (("real_share = 0.0", "mix.real_share"), ("real_share = 1.5", "mix.real_share"),
                        ('voice_bank = "yes"', "mix.voice_bank"), ("share = 0.5", "mix.share")):
        key = line.split(" = ")[0]
        body = re.sub(rf"(?m)^{key} = .*$", line, text) if key != "share" else text.replace("[mix]\n", f"[mix]\n{line}\n")
        path = tmp_path / "kws.toml"
        path.write_text(body)
        with pytest.raises(BuildError) as err:
            load_recipe(path)
        assert str(err.value).startswith(f"{path}: ") and f"'{field}'" in str(err.value), str(err.value)
    quality = tmp_path / "quality.toml"
    quality.write_text((ROOT / "models" / "quality.toml").read_text() + "\n[mix]\nvoice_bank = true\n")
    with pytest.raises(BuildError, match=r"quality.toml: table '\[mix\]' is for kinds with built-in data"):
        load_recipe(quality)


def test_voice_bank_needs_recordings_and_a_keyword_model(tmp_path):
    from npubuild.pipeline import build

    root = make_project(tmp_path / "project")
    with pytest.raises(BuildError, match=r"^--voice-bank: give --data-dir too"):
        build(root, model="kws", target=TARGET, profile="smoke", voice_bank=True, log=lambda s: None)
    folder = released_layout(tmp_path / "rec", np.random.default_rng(2))
    with pytest.raises(BuildError, match=r"^--voice-bank: model quality \(image_quality\) has no built-in data"):
        build(root, model="quality", target=TARGET, profile="smoke", data_dir=folder, voice_bank=True,
              log=lambda s: None)


@pytest.mark.slow
def test_recordings_with_the_voice_bank_build_a_model(smoke_project, tmp_path):
    """A smoke build of recordings mixed with the voice bank, in the session's project (its built-in data
    stage is reused) with assets of its own: the data file holds both, training draws epochs of both,
    validation and test hold the recordings only, and the assets say what the model was trained on."""
    from npubuild.pipeline import build

    root = smoke_project[0]
    rng = np.random.default_rng(3)
    folder = released_layout(tmp_path / "my recordings", rng, speakers=[f"{i:08x}" for i in range(1, 4)])
    for i in range(4, 10):  # more training speakers
        for word in RECIPE.keywords:
            write_wav(folder / word / f"{i:08x}_nohash_0.wav", rng.uniform(-0.3, 0.3, 16000))
    lines: list[str] = []
    build(root, model="kws", target=TARGET, profile="smoke", data_dir=folder, voice_bank=True,
          assets_dir=tmp_path / "assets", log=lines.append)
    assert "[data kws] up to date" in lines  # the session's built-in data, reused
    base = next((root / "build" / "smoke" / "kws").glob("mix-*"))
    with np.load(base / "data" / "features.npz") as d:
        assert {"x_bank", "x_bank_variants", "y_bank", "real_share", "epoch_samples"} <= set(d.files)
        n_real, n_bank = len(d["y_train"]), len(d["y_bank"])
        # 70 keyword clips, the one unknown word, silence: its recorded piece and 6 more cut from it (10%)
        assert n_real == 10 * 7 + 1 + 7 and float(d["real_share"]) == RECIPE.mix.real_share
        assert d["x_train_variants"].shape[0] == RECIPE.profile("smoke").train_variants - 1
        assert len(d["y_test"]) == 12  # the test speaker's clips only: no voice-bank clip
    log = json.loads((base / "fp32" / "train.json").read_text())
    assert log["samples"] == n_real + n_bank
    header = (tmp_path / "assets" / TARGET / "kws" / "kws_meta.h").read_text()
    assert re.search(r'#define KWS_DATASET "my recordings and the built-in data \(mix-[0-9a-f]{12}\)"', header)
    assert any(re.match(r"  voice bank: \d+ built-in training clips beside the recordings, 50% of each epoch", line)
               for line in lines)
    # invoke evaluate on that model: the test speaker's keyword clips (testing_list.txt) and, as the released
    # test set's layout has it, every _unknown_/ and _silence_/ clip
    from npubuild.evaluation_report import evaluate_dataset
    from npubuild.kinds.base import WithBuiltinData

    result = evaluate_dataset(root, model="kws", data_dir=folder, profile="smoke", assets_dir=tmp_path / "assets",
                              trained_on=WithBuiltinData(folder), log=lambda s: None)
    assert result["sets"]["folder"]["count"] == 10 + 3 + 3 and result["trained_on"].startswith("my recordings and the")
    assert (tmp_path / "assets" / "evaluate" / f"kws-my_recordings-by-{base.name}.json").is_file()
    with pytest.raises(BuildError, match=r"not found; run invoke build first \(--model kws --profile smoke "
                                         r"--data-dir .*my recordings\)"):
        evaluate_dataset(root, model="kws", data_dir=folder, profile="smoke", trained_on=folder, log=lambda s: None)
