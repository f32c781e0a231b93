"""The camera model of the image-quality data: each physical parameter does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from npubuild.kinds.quality import camera


def test_srgb_round_trip_and_known_values():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(camera.to_srgb(camera.to_linear(x)), x, atol=1e-5)
    assert camera.to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-4)  # mid-grey sRGB 128 is 21% linear
    assert camera.to_srgb(np.float32(camera.GREY)) == pytest.approx(0.4613, abs=1e-3)


def test_one_stop_doubles_linear_light_and_the_sensor_clips():
    linear = np.array([0.05, 0.2, 0.4, 0.6, 0.9], np.float32)
    assert np.allclose(camera.expose(linear, 1.0), [0.1, 0.4, 0.8, 1.0, 1.0])
    assert np.allclose(camera.expose(linear, -2.0), linear / 4)
    assert np.allclose(camera.expose(linear, 0.5), np.minimum(linear * 2**0.5, 1.0))


def test_tone_curves_are_monotonic_from_black_to_white():
    x = np.linspace(0, 1, 256, dtype=np.float32)
    for name, curve in camera.TONE_CURVES.items():
        y = curve(x)
        assert y[0] == pytest.approx(0, abs=1e-6) and y[-1] == pytest.approx(1, abs=1e-4), name
        assert np.all(np.diff(y) >= -1e-6), name


def test_shake_kernel_is_a_psf_whose_spread_grows_with_its_length():
    spreads = []
    for length in (2.0, 6.0, 12.0):
        k = camera.shake_kernel(length, seed=4)
        assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
        y, x = np.mgrid[:k.shape[0], :k.shape[1]]
        cy, cx = (k * y).sum(), (k * x).sum()
        spreads.append(float(np.sqrt((k * ((y - cy) ** 2 + (x - cx) ** 2)).sum())))
        # the path fits in the kernel: its support spans at most the trajectory length (+ splat)
        rows, cols = np.nonzero(k > 1e-6)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) <= length + 2
    assert spreads[0] < spreads[1] < spreads[2]
    assert np.array_equal(camera.shake_kernel(6.0, 1), camera.shake_kernel(6.0, 1))
    assert not np.array_equal(camera.shake_kernel(6.0, 1), camera.shake_kernel(6.0, 2))


def test_defocus_disc_has_its_radius():
    for radius in (1.8, 3.0, 5.0):
        k = camera.defocus_kernel(radius)
        c = k.shape[0] // 2
        assert k.sum() == pytest.approx(1.0, abs=1e-5)
        row = k[c]
        assert row[c] > 0 and np.count_nonzero(row > 1e-6) in (2 * int(np.floor(radius + 0.5)) + 1,
                                                               2 * int(np.ceil(radius + 0.5)) - 1)


def test_blur_of_a_point_of_light_is_the_kernel():
    point = np.zeros((41, 41, 3), np.float32)
    point[20, 20] = 1.0
    shot = camera.Shot("defocus", 3.0, 0, 0.0, 0.0, 0.0, "srgb", 95)
    out = camera.blur_linear(point, shot)
    k = camera.defocus_kernel(3.0)
    r = k.shape[0] // 2
    assert np.allclose(out[20 - r:21 + r, 20 - r:21 + r, 0], k, atol=1e-5)
    assert out.sum() == pytest.approx(3.0, abs=1e-3)  # energy kept, per channel


def test_sensor_noise_has_its_level_at_grey_and_grows_with_the_signal():
    rng = np.random.default_rng(0)
    sigma = 0.05
    stds = {}
    for level in (camera.GREY, 0.6):  # away from 0 and 1: no clipping at these levels
        flat = np.full((200, 200, 3), level, np.float32)
        stds[level] = float((camera.sensor_noise(rng, flat, sigma) - flat).std())
    assert stds[camera.GREY] == pytest.approx(sigma, rel=0.05)
    # variance = read + shot * signal: half of sigma^2 each at grey
    assert stds[0.6] ** 2 == pytest.approx(0.5 * sigma**2 * (1 + 0.6 / camera.GREY), rel=0.08)


def test_lower_jpeg_quality_loses_more():
    rng = np.random.default_rng(1)
    image = (np.clip(rng.normal(0.5, 0.15, (64, 64, 3)), 0, 1) * 255).astype(np.uint8)
    errors = [np.abs(camera.jpeg(image, q).astype(float) - image).mean() for q in (95, 75, 40)]
    assert errors[0] < errors[1] < errors[2]


def test_take_reports_clipping_and_keeps_the_size():
    scene = np.full((32, 32, 3), 0.7, np.float32)  # linear ~0.45
    base = camera.Shot("none", 0.0, 0, 0.0, 0.0, 0.0, "srgb", 95)
    out, clipped = camera.take(np.random.default_rng(0), scene, base)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and clipped == 0.0
    assert abs(int(out.mean()) - round(0.7 * 255)) <= 2  # sRGB curve inverts the decoding
    _, clipped = camera.take(np.random.default_rng(0), scene, base.__class__(**{**vars(base), "ev": 1.5}))
    assert clipped == 1.0  # 0.45 x 2**1.5 > 1: every pixel saturates
