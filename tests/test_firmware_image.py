"""The firmware test image (firmware_image.py) with the real Arm toolchain and QEMU: linked from the smoke
build's assets, its sections equal to the memory report; a model set over budget fails the link with the
linker's own message; and the application C code run on QEMU's emulated Cortex-M55 (mps3-an547) answers
bit for bit what the same C answers on the host, next to the host Python the build evaluates with. The
figures measured are printed (run with -s) and written to firmware_image_figures.json in the test's tmp
folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from npubuild import firmware_image, firmware_test
from npubuild.config import DetectorSettings, load_target
from npubuild.kinds.quality.views import detail_view, head_views, views_used

from .conftest import ROOT, TARGET, make_project
from .test_app_code import (
    FE,
    KWS,
    QUALITY,
    make_image,
    output_sequences,
    python_frontend,
    rgb565,
    synthetic_audio,
    to_int16,
)

FIGURES: dict = {}
SPEECH_DEV = ROOT.parent / "shared" / "data" / "speech-dev"
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm is not installed")


def record(name: str, **figures) -> None:
    FIGURES[name] = figures
    print(f"\n{name}: {json.dumps(figures)}")


@pytest.fixture(scope="module", autouse=True)
def write_figures(tmp_path_factory):
    yield
    if FIGURES:
        path = tmp_path_factory.getbasetemp() / "firmware_image_figures.json"
        path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
        print(f"\nfigures: {path}")


def _define(text: str, name: str) -> str:
    return re.search(rf"#define {name} (.*)", text).group(1).strip()


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.strip("{} ").split(",")]


# --------------------------------------------------------------------------- targets as data


def test_every_target_has_an_image_layout_whose_regions_do_not_overlap():
    for path in sorted((ROOT / "targets").glob("*.toml")):
        target = load_target(path)
        assert target.image is not None, path
        regions = {r["name"]: r for r in firmware_image.regions(target)}
        assert set(regions) >= {"ML_SRAM", "ML_FLASH", "CODE", "DATA"}
        for kind, memory in target.memory.items():  # each ML region is exactly the report's budget
            assert regions[firmware_image.REGION[kind]]["length"] == memory.budget_bytes
    assert load_target(ROOT / "targets" / f"{TARGET}.toml").image.qemu_machine == "mps3-an547"


# --------------------------------------------------------------------------- the smoke build's image


def _link_report(root: Path, target: str = TARGET) -> dict:
    return json.loads((root / "firmware_assets" / target / "image" / "link_report.json").read_text())


def test_smoke_image_links_and_equals_the_memory_report(smoke_project):
    """Every part the report counts has the same bytes in the ELF (models, arena, I/O buffers, application
    code and buffers); each ML region's use by the linker is the report's (linker stubs, the long branches
    from application code in flash to the C library, are the one thing the layout adds there)."""
    root, _, _ = smoke_project
    result = _link_report(root)
    assert result["linked"] is True and result["equal"] is True, result
    rows = {(r["memory"], r["kind"], r["part"]): r for r in result["parts"]}
    kinds = {k for _, k, _ in rows}
    assert kinds == {"arena", "io", "model", "app_code", "app_buffers"}
    for (_, kind, _), r in rows.items():
        if kind in ("arena", "io", "model", "app_buffers"):
            assert r["elf_bytes"] == r["report_bytes"] > 0, r
        else:  # application code: equal, or larger by the linker stubs in it (and their alignment)
            assert 0 <= r["elf_bytes"] - r["report_bytes"] <= r["linker_stub_bytes"] + 15, r
    sram = next(t for t in result["totals"] if t["memory"] == "sram")
    assert sram["elf_bytes"] == sram["report_bytes"]  # nothing but the report's parts in the models' SRAM
    elf = root / result["elf"]
    assert elf.is_file() and elf.stat().st_size > 0
    text = (root / "firmware_assets" / TARGET / "image" / "link_report.md").read_text()
    assert "| sram | ML_SRAM |" in text and str(root) not in text
    record("ELF vs memory report, " + TARGET,
           parts=[{k: r[k] for k in ("memory", "part", "report_bytes", "elf_bytes", "linker_stub_bytes")}
                  for r in result["parts"]],
           regions=[{k: t[k] for k in ("region", "report_bytes", "elf_bytes", "budget_bytes")}
                    for t in result["totals"]],
           image_adds=result["image_adds"])


def test_makefile_builds_the_same_image(smoke_project, tmp_path):
    """The image folder is self-contained: `make` beside the models' folders links an ELF with the same
    sections, sizes and addresses as the build's."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root, _, _ = smoke_project
    folder = tmp_path / TARGET
    shutil.copytree(root / "firmware_assets" / TARGET, folder)
    proc = subprocess.run(["make", "-s"], cwd=folder / "image", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = firmware_image.elf_sections(folder / "image" / "image.elf")
    built = firmware_image.elf_sections(root / _link_report(root)["elf"])
    assert ours == built


# --------------------------------------------------------------------------- the application code on the M55


def _speech_clips() -> list[tuple[str, np.ndarray]]:
    """Spoken keywords: the built-in synthesiser's (always), real people's from shared/data (when present)."""
    from npubuild.kinds.kws import data as kws_data
    from npubuild.kinds.kws.audio import read_wav

    rng = np.random.default_rng(5)
    voices = kws_data.split_voices(KWS.seed)["test"]
    words = ("yes", "stop", "left", "go", "no", "off")
    specs = [kws_data.ClipSpec(label=KWS.labels.index(w), word=w, voice=voices[i % len(voices)], rate_wpm=140,
                               pitch=50, pitch_range=50, seed=int(rng.integers(2**31)), recording=i % 2 == 1)
             for i, w in enumerate(words)]
    clips = [(f"synthesised {w}", to_int16(c)) for w, c in
             zip(words, kws_data.synthesise(specs, FE.sample_rate, FE.clip_samples, workers=1), strict=True)]
    if SPEECH_DEV.is_dir():
        for label in KWS.labels:
            for path in sorted((SPEECH_DEV / label).glob("*.wav"))[:1]:
                audio = read_wav(path, FE.sample_rate)[:FE.clip_samples]
                audio = np.pad(audio, (0, FE.clip_samples - len(audio)))
                clips.append((f"real {label}", to_int16(audio)))
    return clips


def _host_program(folder: Path, out: Path) -> Path:
    """The image's test main and the models' C compiled for the host (no startup: the host's C library)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    models = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name != "image"]
    sources = [folder / "image" / "test_main.c"]
    for m in models:
        sources += [m / f"{m.name}_model.c"] + [m / f for f in json.loads((m / f"{m.name}_app_sizes.json")
                                                                         .read_text())["files"]]
    proc = subprocess.run([cc, "-std=c99", "-O2", *(f"-I{m}" for m in models), *map(str, sources), "-lm",
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


@needs_qemu
@pytest.mark.slow
def test_application_code_on_cortex_m55_equals_the_host(smoke_project, tmp_path):
    """One QEMU run of the smoke build's image answers front-end streams (a few dozen clips), detector
    runs and image preprocessing; the same test main compiled for the host answers the same requests
    with the same bytes (every float's bits). Beside that, the answers against the host Python."""
    from npubuild.assets import io_tensors
    from npubuild.int8_runner import quantize as quantize_int8
    from npubuild.kinds.kws.detector import Decider
    from npubuild.kinds.kws.frontend import mfcc_batched, standardise
    from npubuild.kinds.quality.data import prepare

    start = time.perf_counter()
    root, _, _ = smoke_project
    assets = root / "firmware_assets" / TARGET
    names = [m["name"] for m in json.loads((assets / "memory_report.json").read_text())["models"]]
    kws, quality = names.index("kws"), names.index("quality")
    base = root / "build" / "smoke" / "kws" / "builtin"
    int8, features = base / KWS.ship / "kws_int8.tflite", base / "data" / "features.npz"
    with np.load(features) as d:
        context = {"_mean": np.float32(d["mean"]), "_std": np.float32(d["std"]), "input": io_tensors(int8)[0]}
    out_info = io_tensors(int8)[1][0]
    meta = (assets / "kws" / "kws_meta.h").read_text()
    settings = DetectorSettings(stride_ms=int(_define(meta, "KWS_DETECT_STRIDE_MS")),
                                average_windows=int(_define(meta, "KWS_DETECT_AVERAGE_WINDOWS")),
                                threshold=float(_define(meta, "KWS_DETECT_THRESHOLD").rstrip("f")),
                                refractory_ms=int(_define(meta, "KWS_DETECT_REFRACTORY_MS")))
    qmeta = (assets / "quality" / "quality_meta.h").read_text()
    head_index, head_q = _numbers(_define(qmeta, "QUALITY_HEAD_OUTPUT_INDEX")), _numbers(
        _define(qmeta, "QUALITY_HEAD_THRESHOLD_Q"))
    size = QUALITY.image.height

    # the requests: clips, one longer stream, detector runs, frames, head outputs
    rng = np.random.default_rng(33)
    clips = [(f"generated {i}", synthetic_audio(rng, FE.clip_samples)) for i in range(24)] + _speech_clips()
    stream = synthetic_audio(rng, 8 * FE.sample_rate)
    sequences = output_sequences(rng, len(KWS.labels))
    every = settings.stride_ms * FE.sample_rate // (1000 * FE.stride_samples)
    frames = []
    # frames fit the image's heap (DTCM, 512 KiB), so the detail view is a crop of the frame's own pixels
    # here; its resize of squares over the detail side is checked on the host (test_app_code.py)
    for i, (h, w) in enumerate([(240, 320), (241, 333), (128, 128), (97, 203), (64, 64), (130, 129), (256, 380)]):
        image = make_image(rng, h, w)
        packed, wide = rgb565(image)
        pad = 3 if i % 2 else 0
        rgb = np.zeros((h, w * 3 + pad), np.uint8)
        rgb[:, :w * 3] = image.reshape(h, -1)
        r565 = np.zeros((h, w + pad), "<u2")
        r565[:, :w] = packed
        frames += [(f"{w}x{h} RGB888", image, rgb, 888, w, h, w * 3 + pad),
                   (f"{w}x{h} RGB565", wide, r565, 565, w, h, w + pad)]
    views = views_used(QUALITY)  # the whole view, and the detail view where the blur heads read one
    view_of_head = head_views(QUALITY)
    head_rows = rng.integers(-128, 128, (2000, len(views), len(head_index))).astype(np.int8)
    head_rows[:256] = np.arange(-128, 128)[:, None, None]
    requests = b"".join(firmware_test.frontend_request(kws, s) for _, s in clips)
    requests += firmware_test.frontend_request(kws, stream)
    for q in sequences.values():
        ends = (np.arange(len(q)) * every + FE.num_frames - 1) * FE.stride_samples + FE.window_samples
        requests += firmware_test.detector_request(kws, ends, q)
    requests += b"".join(firmware_test.preprocess_request(quality, f, fmt, w, h, stride, detail=view == "detail")
                         for _, _, f, fmt, w, h, stride in frames for view in views)
    requests += firmware_test.issues_request(quality, head_rows)

    elf = root / _link_report(root)["elf"]
    m55 = firmware_test.run_on_qemu(elf, "mps3-an547", requests)
    assert m55.exit_code == 0, m55.console
    host = firmware_test.run_program(_host_program(assets, tmp_path / "host_test"), requests)
    assert host.exit_code == 0, host.console
    assert f"{len(clips) + 1 + len(sequences) + len(frames) * len(views) + 1} requests answered" in m55.console
    assert m55.responses == host.responses  # every byte: MFCC floats, int8 inputs, detections, pixels
    answers = firmware_test.Responses(m55.responses)

    # front end: against the host Python (streaming rows, and each clip's window as the model was evaluated)
    input_size = FE.num_frames * FE.num_mfcc
    equal = total = max_step = window_equal = window_total = 0
    worst_mfcc = 0.0
    for _, samples in [*clips, ("stream", stream)]:
        rows, inputs, end = answers.frontend(kws, len(samples) // FE.stride_samples, FE.num_mfcc, input_size)
        py_rows, py_windows = python_frontend(samples, context)
        assert rows.shape == py_rows.shape and end == (len(rows) - 1) * FE.stride_samples + FE.window_samples
        worst_mfcc = max(worst_mfcc, float(np.abs(rows - py_rows).max()))
        diff = np.abs(inputs.reshape(py_windows.shape).astype(int) - py_windows)
        equal, total, max_step = equal + int((diff == 0).sum()), total + diff.size, max(max_step, int(diff.max()))
        if len(samples) == FE.clip_samples:  # the clip's window: the batch features training and evaluation use
            batch = quantize_int8(standardise(mfcc_batched(samples[None].astype(np.float32) / 32768.0, FE)[0],
                                              context["_mean"], context["_std"]),
                                  context["input"].scale, context["input"].zero_point)
            d = np.abs(inputs[-1].reshape(batch.shape).astype(int) - batch)
            window_equal, window_total = window_equal + int((d == 0).sum()), window_total + d.size
            max_step = max(max_step, int(d.max()))
    assert max_step <= 1 and equal / total >= 0.999 and window_equal / window_total >= 0.999

    # detector: exactly listen's Decider on the build's settings
    detections = 0
    for q in sequences.values():
        found, due = answers.detector(kws)
        ends = (np.arange(len(q)) * every + FE.num_frames - 1) * FE.stride_samples + FE.window_samples
        decider = Decider(settings, KWS.labels, out_info.scale, out_info.zero_point, FE.sample_rate)
        expected = [(d.word, d.time_s, d.score) for d in decider.step(q, ends)[0]]
        got = [(KWS.labels[label], round(t / FE.sample_rate, 4),
                round(float(out_info.scale * (s / settings.average_windows - out_info.zero_point)), 4))
               for label, t, s in found]
        assert got == expected
        assert list(np.flatnonzero(due)) == [f for f in range(firmware_test.DUE_FRAMES)
                                             if f >= FE.num_frames and (f - FE.num_frames) % every == 0]
        detections += len(got)
    assert detections > 0

    # preprocessing: within one step of prepare(); the issues: the heads' int8 thresholds
    pixel_equal = pixel_total = pixel_step = 0
    for _, reference, *_ in frames:
        for view in views:
            status, got = answers.preprocess(quality, size * size * 3)
            assert status == 0
            host = (prepare(reference, size) if view == "whole"
                    else detail_view(reference, size, QUALITY.image.detail_side))
            diff = np.abs(got.astype(int) - (host.reshape(-1).astype(int) - 128))
            pixel_equal, pixel_total = pixel_equal + int((diff == 0).sum()), pixel_total + diff.size
            pixel_step = max(pixel_step, int(diff.max()))
    assert pixel_step <= 1
    masks = answers.issues(quality, len(head_rows))
    expected = [sum(1 << i for i, (o, t, v) in enumerate(zip(head_index, head_q, view_of_head, strict=True))
                    if row[v, o] >= t) for row in head_rows]
    assert masks.tolist() == expected
    assert answers.done()
    seconds = time.perf_counter() - start
    record("application code on QEMU mps3-an547 vs host", qemu_seconds=round(m55.seconds, 1),
           test_seconds=round(seconds, 1), requests_bytes=len(requests), responses_bytes=len(m55.responses),
           responses_identical_to_host_c=True,
           frontend={"clips": len(clips), "real_clips": sum(n.startswith("real") for n, _ in clips),
                     "stream_seconds": len(stream) / FE.sample_rate, "int8_values": total,
                     "equal_to_python": round(equal / total, 6), "clip_windows_equal_to_batch_features":
                     round(window_equal / window_total, 6), "max_step": max_step,
                     "max_mfcc_abs_difference_to_python": worst_mfcc},
           detector={"sequences": len(sequences), "detections": detections, "identical_to_decider": True},
           preprocess={"frames": len(frames), "views": list(views), "values": pixel_total, "equal_to_prepare": round(pixel_equal / pixel_total, 6),
                       "max_step": pixel_step},
           issues={"rows": len(head_rows), "identical": True})


@needs_qemu
@pytest.mark.slow
def test_generated_c_keeps_its_bits_under_contracting_vectorising_flags(smoke_project, tmp_path):
    """Built the way firmware often is (GNU C mode, which contracts a * b + c into fused multiply-adds on
    the M55, and -O3, which vectorises with MVE), the image still answers with the same bytes: the
    generated C turns contraction off itself."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root, _, _ = smoke_project
    folder = tmp_path / TARGET
    shutil.copytree(root / "firmware_assets" / TARGET, folder)
    flags = "-mcpu=cortex-m55 -mthumb -mfloat-abi=hard -O3 -std=gnu11"
    proc = subprocess.run(["make", "-s", f"CFLAGS={flags}"], cwd=folder / "image", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(folder / "image" / "kws_frontend.o")],
                                 capture_output=True, text=True, check=True).stdout
    assert re.search(r"\bv(add|mul|sub)\.f32\s+q\d", disassembly)  # MVE vector float code
    rng = np.random.default_rng(34)
    requests = firmware_test.frontend_request(0, synthetic_audio(rng, 4 * FE.sample_rate))
    image = make_image(rng, 150, 200)
    requests += firmware_test.preprocess_request(1, image, 888, 200, 150, 600)
    default = firmware_test.run_on_qemu(root / _link_report(root)["elf"], "mps3-an547", requests)
    gnu = firmware_test.run_on_qemu(folder / "image" / "image.elf", "mps3-an547", requests)
    assert default.exit_code == gnu.exit_code == 0
    assert gnu.responses == default.responses and len(gnu.responses) > 100_000


def test_image_is_not_linked_without_the_arm_toolchain(smoke_project, tmp_path, monkeypatch):
    """No arm-none-eabi-gcc: the image's sources are still written, the link report says why there is no
    ELF, and the build's verdict is the report's alone."""
    root, _, _ = smoke_project
    folder = tmp_path / TARGET
    shutil.copytree(root / "firmware_assets" / TARGET, folder)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    result = firmware_image.make_image(load_target(ROOT / "targets" / f"{TARGET}.toml"), folder, tmp_path / "b")
    assert result["linked"] is None and "not found" in result["note"]
    assert all((folder / "image" / name).is_file() for name in firmware_image.SOURCES)
    report = json.loads((folder / "memory_report.json").read_text())
    assert firmware_image.verdict(report, result) is None


def test_verdict_names_a_disagreement(smoke_project):
    root, _, _ = smoke_project
    report = json.loads((root / "firmware_assets" / TARGET / "memory_report.json").read_text())
    failed = {"linked": False, "linker": ["ld: region `ML_FLASH' overflowed by 16 bytes"]}
    problem = firmware_image.verdict(report, failed)
    assert "does not link although the memory report fits" in problem and "overflowed by 16 bytes" in problem
    assert firmware_image.verdict(report, _link_report(root)) is None


def test_project_without_image_tables_builds_no_image(tmp_path):
    project = make_project(tmp_path / "p")
    path = project / "targets" / f"{TARGET}.toml"
    text = path.read_text()
    path.write_text(text[:text.index("\n# The firmware test image")] + "\n")
    assert load_target(path).image is None
