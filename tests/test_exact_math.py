"""The image data's maths that gives the same bits on every x86-64 CPU (`kinds/quality/exact_math.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from npubuild.kinds.quality import exact_math as em

ROOT = Path(__file__).resolve().parent.parent


def test_functions_agree_with_numpy_to_a_few_units_in_the_last_place():
    rng = np.random.default_rng(0)
    x = rng.uniform(-30, 30, 20000)
    assert np.max(np.abs(em.exp(x) / np.exp(x) - 1)) < 4e-15
    y = rng.uniform(1e-9, 300, 20000)
    assert np.max(np.abs(em.log(y) - np.log(y))) < 4e-15
    z = rng.random(20000)
    for g in (2.4, 1 / 2.4, 0.5):
        assert np.max(np.abs(em.power(z, g) - z**g)) < 4e-15
    assert em.power(np.array([0.0]), 2.4)[0] == 0.0 and em.log(np.array([0.0]))[0] == -np.inf
    a = rng.uniform(-6, 6, 2000)
    assert np.max(np.abs(em.sin(a) - np.sin(a))) < 1e-13 and np.max(np.abs(em.cos(a) - np.cos(a))) < 1e-13
    assert em.exp2(-2.0) == 0.25 and abs(em.exp2(1.7) / 2**1.7 - 1) < 4e-16


def test_curve_table_interpolates_within_float32_precision():
    curve = em.Curve(lambda x: em.power(x, 2.4))
    x = np.random.default_rng(1).random(50000).astype(np.float32)
    assert curve(x).dtype == np.float32
    assert np.max(np.abs(curve(x) - x.astype(np.float64) ** 2.4)) < 1e-6
    assert curve(np.array([-1.0, 0.0, 1.0, 2.0])).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_filters_are_scipys_and_scikit_images_bit_for_bit_here():
    """The same weights and kernels as scipy.ndimage.gaussian_filter and skimage.transform.resize: on
    this machine (whatever its numpy kernels) the outputs are equal, so the data is what it was."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve
    from skimage.transform import resize

    rng = np.random.default_rng(2)
    image = rng.random((90, 70, 3)).astype(np.float32)
    for sigma in (0.4, 1.3, 3.7):
        for mode in ("reflect", "mirror", "wrap"):
            ours = em.gaussian_filter(image, (sigma, sigma, 0), mode=mode)
            assert np.array_equal(ours, gaussian_filter(image, (sigma, sigma, 0), mode=mode)), (sigma, mode)
    for shape, out in (((300, 280), (128, 128)), ((97, 203), (64, 64)), ((60, 64), (128, 128)), ((700, 500), (512, 512))):
        picture = rng.random((*shape, 3)).astype(np.float32)
        shrink = shape[0] > out[0] or shape[1] > out[1]
        expected = resize(picture, out, order=1, anti_aliasing=shrink, preserve_range=True, mode="reflect")
        assert np.array_equal(em.resize(picture, *out), expected.astype(np.float32)), shape
    kernel = rng.random((13, 13))
    flat = rng.random((60, 50))
    assert np.allclose(em.fft_convolve_same(flat, kernel), fftconvolve(flat, kernel, mode="same"), rtol=0, atol=1e-12)


DATA_DIGEST = """
import hashlib, json, sys
import numpy as np
from npubuild.kinds.quality import data
x, y, p = data.make_split(11, "train", 24, 64, data.SUPPORTED_HEADS, detail_side=256)
c, _, _ = data.make_split(11, "test_cam", 8, 64, data.SUPPORTED_HEADS, detail_side=256)
picture = np.random.default_rng(4).random((300, 220, 3)).astype(np.float32)
digest = hashlib.sha256(b"".join(a.tobytes() for a in (x, y, p, c, data.prepare(picture, 64))))
print(json.dumps({"sha256": digest.hexdigest(), "numpy": np.__version__}))
"""

# numpy's dispatch targets switched off in turn (as on a CPU without AVX-512, and one without AVX2/FMA),
# and last also libjpeg-turbo's vector code (Pillow's JPEG codec).
WITHOUT = {"avx512": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
           "avx2_and_avx512": {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
           "and_jpeg_simd": {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "JSIMD_FORCENONE": "1"}}


NUMPY_POWER = "import hashlib, numpy as np; print(hashlib.sha256((np.linspace(0.01, 1, 100001) ** 2.4).tobytes()).hexdigest())"


def _run(code: str, without: dict | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "JSIMD_FORCENONE")}
    env.update({"PYTHONPATH": str(ROOT), **(without or {})})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_built_in_images_are_the_same_bytes_without_the_cpus_vector_units():
    """The built-in images (training and camera-like splits) and the resize policy give the same bytes
    with numpy's AVX-512 and AVX2/FMA kernels and libjpeg-turbo's switched off: what a CPU without them
    computes. On a CPU
    with AVX-512, numpy's own power gives other bits that way (the switch works; `exact_math` is why
    the data does not change)."""
    reference = json.loads(_run(DATA_DIGEST, None))["sha256"]
    for name, without in WITHOUT.items():
        assert json.loads(_run(DATA_DIGEST, without))["sha256"] == reference, name
    if np._core._multiarray_umath.__cpu_features__.get("AVX512F"):
        assert _run(NUMPY_POWER, WITHOUT["avx512"]) != _run(NUMPY_POWER, None)
