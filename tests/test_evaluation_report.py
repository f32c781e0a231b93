"""`invoke evaluate`: the shipped models on a labelled folder (messy real-world files included)
and on the built-in test sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from npubuild.errors import BuildError
from npubuild.evaluation_report import evaluate_dataset
from npubuild.kinds.kws import audio as kws_audio
from npubuild.kinds.kws import data as kws_data

from .conftest import TARGET, report_model
from .test_kws_data import RECIPE, write_wav

pytestmark = pytest.mark.slow


def speech_commands_like(folder, n_per_word=2):
    """Keyword and other-word clips spoken by held-out voices, as a Speech Commands folder, plus
    the files real recordings bring: stereo 44.1 kHz, 0.7 s, DC offset, clipped, broken, empty."""
    specs = [s for s in kws_data.plan_clips(RECIPE, RECIPE.profile("smoke"), "test") if s.word]
    words = {}
    for s in specs:
        name = s.word if s.word in RECIPE.keywords else "bird"
        if len(words.setdefault(name, [])) < n_per_word:
            words[name].append(s)
    chosen = [s for group in words.values() for s in group]
    audio = kws_data.synthesise(chosen, 16000, 16000, workers=1)
    for i, (s, clip) in enumerate(zip(chosen, audio, strict=True)):
        name = s.word if s.word in RECIPE.keywords else "bird"
        write_wav(folder / name / f"{i:08x}_nohash_0.wav", clip)
    yes = audio[[i for i, s in enumerate(chosen) if s.word == "yes"][0]]
    t = np.arange(44100) / 44100
    resampled = np.interp(t * 16000, np.arange(16000), yes)
    write_wav(folder / "yes" / "stereo_44k.wav", np.stack([resampled, resampled], 1).reshape(-1), rate=44100,
              channels=2)
    write_wav(folder / "no" / "short_0.7s.wav", audio[[i for i, s in enumerate(chosen) if s.word == "no"][0]][:11200])
    write_wav(folder / "up" / "dc_offset.wav", np.clip(audio[0] + 0.2, -1, 1))
    write_wav(folder / "go" / "clipped.wav", np.clip(audio[1] * 40, -1, 1))
    (folder / "left" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt ")
    write_wav(folder / "right" / "empty.wav", np.zeros(0))
    write_wav(folder / "_background_noise_" / "hum.wav",
              0.1 * kws_audio.make_noise(np.random.default_rng(5), 48000 + 500, 16000))
    return len(chosen) + 4  # + stereo, short, dc, clipped; the broken and the empty one are skipped


def test_kws_on_a_speech_commands_folder(smoke_project, tmp_path):
    root, _, _ = smoke_project
    data = tmp_path / "my recordings"
    clips = speech_commands_like(data)
    lines: list[str] = []
    result = evaluate_dataset(root, model="kws", data_dir=data, profile="smoke", log=lines.append)
    folder = result["sets"]["folder"]
    assert folder["count"] == clips + 3  # three 1 s pieces of background noise as silence
    files = result["files"]
    assert files["used"] == clips + 1 and files["skipped"] == 2  # the noise file: one file, three clips
    assert files["skipped_by_reason"] == {
        "WAV file holds no samples": {"count": 1, "files": ["right/empty.wav"]},
        "not a readable WAV file": {"count": 1, "files": ["left/broken.wav"]}}
    converted = files["converted"]
    assert converted["stereo averaged to mono"] == 1 and converted["resampled to 16 kHz"] == 1
    assert converted["shorter than 1 s, zero-padded"] == 1 and converted["1 s pieces of background noise"] == 3
    assert converted["DC offset removed"] >= 1 and converted["clipped (kept)"] >= 1
    for kind in ("fp32", "int8"):
        m = folder[kind]
        confusion = np.array(m["confusion"])
        assert confusion.sum() == folder["count"]
        assert m["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
        assert set(m["per_class"]) == set(RECIPE.labels)
    out = root / "firmware_assets" / "evaluate"
    assert json.loads((out / "kws-my_recordings.json").read_text()) == result
    md = (out / "kws-my_recordings.md").read_text()
    assert "skipped, not a readable WAV file: 1 (`left/broken.wav`)" in md and "| yes |" in md
    assert (out / "kws-my_recordings-confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("my_recordings folder" in line for line in lines)


def test_kws_folder_every_file_is_used_or_counted_with_its_reason(smoke_project, tmp_path):
    """The released test set's layout (_unknown_/, _silence_/) and every oddity: used + skipped = files."""
    root, _, _ = smoke_project
    data = tmp_path / "test set"
    clips = speech_commands_like(data)
    noise = 0.05 * kws_audio.make_noise(np.random.default_rng(1), 16000, 16000)
    for i in range(3):
        write_wav(data / "_unknown_" / f"u{i}_nohash_0.wav", noise)
    write_wav(data / "_silence_" / "s0.wav", noise)
    (data / "README.md").write_text("not a clip")
    (data / "yes" / ".DS_Store").write_bytes(b"\0\1")
    write_wav(data / "no" / "takes" / "deep.wav", noise)  # nested below a word folder
    write_wav(data / "_junk_" / "x.wav", noise)  # an underscore folder that is no class
    write_wav(data / "_background_noise_" / "blip.wav", noise[:8000])  # shorter than a clip
    present = sum(1 for p in data.rglob("*") if p.is_file())
    result = evaluate_dataset(root, model="kws", data_dir=data, profile="smoke", log=lambda s: None)
    files = result["files"]
    assert files["used"] + files["skipped"] == present
    assert files["used"] == clips + 1 + 3 + 1  # word clips, the hum file, _unknown_/, _silence_/
    reasons = {r: v["count"] for r, v in files["skipped_by_reason"].items()}
    assert reasons["not in a word folder"] == 1 and reasons["not a .wav file"] == 1
    assert reasons["in a subfolder of a word folder"] == 1 and reasons["background noise shorter than 1 s"] == 1
    assert any(r.startswith("folder _junk_/ is not a class") for r in reasons)


def test_kws_on_the_builtin_test_sets(smoke_project):
    root, _, _ = smoke_project
    result = evaluate_dataset(root, model="kws", data_dir=None, profile="smoke", target=TARGET, log=lambda s: None)
    assert list(result["sets"]) == ["test", "test_espeak", "test_flite", "test_rec"]
    # the engines' subsets part the test split's speech (silence has no engine)
    silence = result["sets"]["test"]["int8"]["confusion"][RECIPE.labels.index("_silence_")]
    assert (result["sets"]["test_espeak"]["count"] + result["sets"]["test_flite"]["count"] + sum(silence)
            == result["sets"]["test"]["count"])
    # leave one engine out: a model trained without flite, scored on the flite and the other test clips
    out = result["engine_out"]
    with np.load(root / "build" / "smoke" / "kws" / "builtin" / "data" / "features.npz") as d:
        flite = d["e_train"] == 1
        assert out["train_clips"] == int((~flite).sum()) and flite.any()
    assert out["test"]["flite"]["count"] == result["sets"]["test_flite"]["count"]
    assert out["test"]["others"]["count"] == result["sets"]["test"]["count"] - out["test"]["flite"]["count"]
    assert out["gap_fp32_points"] == pytest.approx(
        100 * (out["test"]["others"]["fp32_accuracy"] - out["test"]["flite"]["fp32_accuracy"]), abs=0.01)
    assert out["shipped_fp32_on_engine"] == result["sets"]["test_flite"]["fp32"]["accuracy"]
    assert "Leave one engine out" in (root / "firmware_assets" / "evaluate" / "kws-builtin.md").read_text()
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    assert result["on_target"]["inference_ms"] == report_model(report, "kws")["inference_ms"]
    build = json.loads((root / "build" / "smoke" / "kws" / "builtin" / "prune_cluster" / "evaluation.json")
                       .read_text())
    # the in-distribution set is the build's own test split: the same figures
    assert result["sets"]["test"]["int8"]["accuracy"] == build["int8"]["accuracy"]
    assert result["sets"]["test_rec"]["count"] == result["sets"]["test"]["count"]
    assert result["gap_int8_points"] == pytest.approx(
        100 * (result["sets"]["test"]["int8"]["accuracy"] - result["sets"]["test_rec"]["int8"]["accuracy"]), abs=0.01)
    for label in RECIPE.labels:
        assert label in result["sets"]["test_rec"]["int8"]["per_class"]
    # the streaming detector: what the build's detector stage chose, no hand copy
    tuned = json.loads((root / "build" / "smoke" / "kws" / "builtin" / "prune_cluster" / "detector.json").read_text())
    assert result["detector"]["settings"] == {k: tuned["chosen"][k] for k in
                                              ("stride_ms", "average_windows", "threshold", "refractory_ms")}
    assert result["detector"]["sweep"]["chosen"] == tuned["chosen"]
    header = (root / "firmware_assets" / TARGET / "kws" / "kws_meta.h").read_text()
    assert f"#define KWS_DETECT_STRIDE_MS {tuned['chosen']['stride_ms']}\n" in header
    assert f"#define KWS_DETECT_AVERAGE_WINDOWS {tuned['chosen']['average_windows']}\n" in header


def test_quality_on_a_labelled_folder_skips_bad_images(smoke_project, tmp_path):
    root, _, _ = smoke_project
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        shape = (600, 800, 3) if i == 7 else (40 + 8 * i, 64, 3)  # one large enough for a detail view of its own
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(data / f"{i}.jpg")
        rows.append(f"{i}.jpg,{i % 2},{int(i < 4)},0,{int(i > 5)}")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    rows.append("broken.jpg,1,0,0,0")
    (data / "labels.csv").write_text("file,blurry,too_dark,too_bright,noisy\n" + "\n".join(rows) + "\n")
    (data / "notes.txt").write_text("an unlisted file")
    result = evaluate_dataset(root, model="quality", data_dir=data, profile="smoke", log=lambda s: None)
    assert result["files"]["used"] == 8 and result["files"]["skipped"] == 3
    assert result["files"]["used"] + result["files"]["skipped"] == sum(1 for p in data.rglob("*") if p.is_file())
    assert result["files"]["skipped_by_reason"] == {
        "not a readable image": {"count": 1, "files": ["broken.jpg"]},
        "labels file (read, not an image)": {"count": 1, "files": ["labels.csv"]},
        "not listed in labels.csv": {"count": 1, "files": ["notes.txt"]}}
    head = result["sets"]["folder"]["int8"]["per_head"]["too_dark"]
    assert head["positives"] == 4 and np.array(head["confusion"]).sum() == 8
    assert {"precision", "recall", "f1"} <= set(head)
    # each head scored on the view it reads, as the predictor (and firmware) decide a photo
    from npubuild.kinds.quality.predictor import ImageQualityPredictor

    predictor = ImageQualityPredictor.create(
        root / "build" / "smoke" / "quality" / "builtin" / "prune_cluster" / "quality_int8.tflite",
        root / "firmware_assets" / TARGET / "quality" / "quality_meta.json")
    found = [{name for name, _ in predictor.predict(np.asarray(Image.open(data / f"{i}.jpg").convert("RGB")))}
             for i in range(8)]
    for name, scored in result["sets"]["folder"]["int8"]["per_head"].items():
        truth = [int(r.split(",")[1 + ["blurry", "too_dark", "too_bright", "noisy"].index(name)]) for r in rows[:8]]
        confusion = np.zeros((2, 2), int)
        for t, f in zip(truth, found, strict=True):
            confusion[t, int(name in f)] += 1
        assert confusion.tolist() == scored["confusion"], name


def test_evaluate_errors_are_one_line(smoke_project, tmp_path):
    root, _, _ = smoke_project
    with pytest.raises(BuildError, match="data directory does not exist"):
        evaluate_dataset(root, model="kws", data_dir=tmp_path / "nothing", profile="smoke", log=lambda s: None)
    with pytest.raises(BuildError) as err:
        evaluate_dataset(root, model="kws", data_dir=None, profile="default", build_dir=tmp_path / "b",
                         log=lambda s: None)
    assert "kws_int8.tflite: not found; run invoke build first (--model kws --profile default)" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no readable .wav clips"):
        evaluate_dataset(root, model="kws", data_dir=tmp_path / "empty", profile="smoke", log=lambda s: None)
