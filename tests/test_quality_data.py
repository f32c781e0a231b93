"""The built-in image-quality dataset and the labelled-folder reader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from npubuild.errors import BuildError
from npubuild.kinds.quality import data as q

HEADS = q.SUPPORTED_HEADS


def test_same_seed_same_images_other_seed_other_images():
    a = q.make_split(5, "val", 12, 64, HEADS)
    b = q.make_split(5, "val", 12, 64, HEADS)
    c = q.make_split(6, "val", 12, 64, HEADS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_workers_do_not_change_the_data():
    one = q.make_split(3, "train", q.CHUNK + 5, 32, HEADS, workers=1)
    two = q.make_split(3, "train", q.CHUNK + 5, 32, HEADS, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_splits_share_no_base_image():
    bases = q.split_bases(1234)
    photos = [set(bases[s]) for s in q.SPLITS]
    assert all(photos) and not (photos[0] & photos[1] or photos[0] & photos[2] or photos[1] & photos[2])
    assert set().union(*photos) == set(q.NATURAL)
    seeds = [set(q.texture_seeds(1234, s, 5000)) for s in q.SPLITS]
    assert not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])


def test_labels_follow_the_parameters_with_a_margin():
    rng = np.random.default_rng(0)
    for _ in range(400):
        d = q.draw_degradation(rng)
        labels = dict(zip(HEADS, d.labels(HEADS), strict=True))
        if d.blur_kind == "gaussian":
            low, high = q.BLUR_SIGMA
            assert (high[0] <= d.blur_strength <= high[1]) if labels["blurry"] else d.blur_strength <= low[1]
        else:
            assert labels["blurry"]
        low, high = q.NOISE_SIGMA
        assert (high[0] <= d.noise_sigma <= high[1]) if labels["noisy"] else d.noise_sigma <= low[1]
        assert not (labels["too_dark"] and labels["too_bright"])
        if not (labels["too_dark"] or labels["too_bright"]):
            assert 0.8 <= d.gain <= 1.25 and 0.85 <= d.gamma <= 1.15


def test_degradations_do_what_their_labels_say():
    rng = np.random.default_rng(1)
    clean = q.random_view(rng, q.skin_texture(9), 96)

    def mean(image):
        return image.astype(np.float32).mean() / 255

    base = q.Degradation(False, "gaussian", 0.0, 0.0, "clean", 1.0, 1.0, False, 0.0)
    ref = q.degrade(rng, clean, base)
    dark = q.degrade(rng, clean, q.Degradation(False, "gaussian", 0.0, 0.0, "dark", 0.2, 1.0, False, 0.0))
    bright = q.degrade(rng, clean, q.Degradation(False, "gaussian", 0.0, 0.0, "bright", 3.0, 1.0, False, 0.0))
    blurred = q.degrade(rng, clean, q.Degradation(True, "defocus", 4.0, 0.0, "clean", 1.0, 1.0, False, 0.0))
    noisy = q.degrade(rng, clean, q.Degradation(False, "gaussian", 0.0, 0.0, "clean", 1.0, 1.0, True, 0.12))
    assert mean(dark) < 0.5 * mean(ref) and mean(bright) > 0.85 and (bright == 255).mean() > 0.3

    def detail(image):
        return float(np.abs(np.diff(image.astype(np.float32), axis=0)).mean())

    assert detail(blurred) < 0.6 * detail(ref) < detail(noisy)


def write_folder(tmp_path, rows, header="file,blurry,too_dark,too_bright,noisy,split"):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


GOOD = ["a.png,1,0,0,0,train", "b.png,0,1,0,0,val", "c.png,0,0,0,1,test"]


def test_labelled_folder_reads_and_resizes(tmp_path):
    write_folder(tmp_path, GOOD)
    out = tmp_path / "features.npz"
    q.build_from_dir(tmp_path, HEADS, 32, out)
    x, y = q.load_images(out, "val")
    assert x.shape == (1, 32, 32, 3) and x.dtype == np.uint8 and y.tolist() == [[0, 1, 0, 0]]


@pytest.mark.parametrize(("rows", "header", "problem"), [
    (GOOD, "file,blurry,too_dark,noisy,split", "missing column 'too_bright'"),
    (["a.png,1,0,0,maybe,train", *GOOD[1:]], None, "line 2: column 'noisy' is 'maybe', expected 0 or 1"),
    (["zzz.png,1,0,0,0,train", *GOOD[1:]], None, "zzz.png: listed in labels.csv but not found"),
    (["notes.txt,1,0,0,0,train", *GOOD[1:]], None, "notes.txt: not a readable image"),
    (["tiny.png,1,0,0,0,train", *GOOD[1:]], None, "tiny.png: image is 8x8, smaller than 32x32"),
    (GOOD[:2], None, "no images in the test split"),
])
def test_bad_labelled_folder_is_one_line_naming_the_file(tmp_path, rows, header, problem):
    write_folder(tmp_path, rows, header or "file,blurry,too_dark,too_bright,noisy,split")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(BuildError) as err:
        q.build_from_dir(tmp_path, HEADS, 32, tmp_path / "features.npz")
    message = str(err.value)
    assert problem in message and "\n" not in message and str(tmp_path) in message
    assert not (tmp_path / "features.npz").exists()


def test_input_quantization_is_pixel_minus_128():
    pixels = np.arange(256, dtype=np.uint8)
    x = q.to_model_input(pixels)
    assert np.array_equal(np.round(x / (1 / 128)).astype(np.int64), pixels.astype(np.int64) - 128)
    ramp = q.full_range_image(16, 16)
    assert ramp.min() == 0 and ramp.max() == 255
