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
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_workers_do_not_change_the_data():
    one = q.make_split(3, "train", q.CHUNK + 5, 32, HEADS, workers=1)
    two = q.make_split(3, "train", q.CHUNK + 5, 32, HEADS, workers=2)
    assert all(np.array_equal(u, v) for u, v in zip(one, two, strict=True))


def test_splits_share_no_base_image():
    bases = q.split_bases(1234)
    photos = [set(bases[s]) for s in q.SPLITS]
    assert all(photos) and not (photos[0] & photos[1] or photos[0] & photos[2] or photos[1] & photos[2])
    assert set().union(*photos) == set(q.NATURAL)
    seeds = [set(q.texture_seeds(1234, s, 5000)) for s in q.SPLITS]
    assert not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])


def test_labels_follow_the_physical_parameters_with_a_margin():
    from npubuild.kinds.quality.camera import TEST_CAMERA, TRAIN_CAMERA

    rng = np.random.default_rng(0)
    for style in (TRAIN_CAMERA, TEST_CAMERA):
        for _ in range(600):
            shot, labels = q.draw_shot(rng, style)
            if labels["blurry"]:
                low, high = q.SHAKE_PX if shot.blur == "shake" else q.DEFOCUS_PX
                assert low <= shot.blur_px <= high
            else:
                assert shot.blur_px <= (q.CLEAN_SHAKE_PX if shot.blur == "shake" else q.CLEAN_DEFOCUS_PX)
            band = q.EV_DARK if labels["too_dark"] else q.EV_BRIGHT if labels["too_bright"] else q.EV_CLEAN
            assert band[0] <= shot.ev <= band[1] and not (labels["too_dark"] and labels["too_bright"])
            noise = q.NOISE_SIGMA if labels["noisy"] else style.clean_noise
            assert noise[0] <= shot.noise <= noise[1]
            assert shot.tone_curve in style.tone_curves
            assert style.jpeg_quality[0] <= shot.jpeg_quality <= style.jpeg_quality[1]
    # the camera-like test set's choices are none of training's
    assert not set(TRAIN_CAMERA.tone_curves) & set(TEST_CAMERA.tone_curves)
    assert TEST_CAMERA.jpeg_quality[1] < TRAIN_CAMERA.jpeg_quality[0]


def test_blur_hidden_by_clipping_or_darkness_is_drawn_again(monkeypatch):
    from npubuild.kinds.quality.camera import TRAIN_CAMERA, Shot

    draws = iter([
        (Shot("shake", 14.0, 1, 4.0, 0.0, 0.4, "srgb", 90), {"blurry": 1, "too_dark": 0, "too_bright": 1, "noisy": 0}),
        (Shot("defocus", 3.0, 1, -3.5, 0.0, 0.4, "srgb", 90), {"blurry": 1, "too_dark": 1, "too_bright": 0, "noisy": 0}),
        (Shot("shake", 14.0, 1, 0.0, 0.0, 0.4, "srgb", 90), {"blurry": 1, "too_dark": 0, "too_bright": 0, "noisy": 0}),
    ])
    monkeypatch.setattr(q, "draw_shot", lambda rng, style, scale=1.0: next(draws))
    textured = q.random_view(np.random.default_rng(1), (q.natural_image("brick"),), 64, detail_view=False)[0]
    _, labels, params = q.picture(np.random.default_rng(0), textured, TRAIN_CAMERA, HEADS)
    assert labels == [1, 0, 0, 0] and params[q.PARAMS.index("ev")] == 0.0  # the third draw: nothing hides it
    # a blur that keeps most of the fine detail (a flat scene has none to lose) is drawn again too
    assert q.detail_kept(textured, Shot("shake", 14.0, 1, 0.0, 0.0, 0.4, "srgb", 90)) < q.BLUR_VISIBLE
    assert q.detail_kept(textured, Shot("none", 0.0, 1, 0.0, 0.0, 0.4, "srgb", 90)) == pytest.approx(1.0)
    # and over many real draws, no blurry picture is as dark as the hiding limit
    rng = np.random.default_rng(3)
    monkeypatch.undo()
    rows = np.array([q.picture(rng, textured, TRAIN_CAMERA, HEADS)[2] for _ in range(200)])
    blurry = rows[:, q.PARAMS.index("blur_px")] >= min(q.SHAKE_PX[0], q.DEFOCUS_PX[0])
    assert blurry.any() and (rows[blurry, q.PARAMS.index("ev")] > q.HIDDEN_DARK_EV).all()


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


def write_bases(folder, count, size=160):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = (rng.uniform(0, 1, (size, size + 20, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"photo{i:02d}.png")


def test_base_images_replace_the_builtin_bases(tmp_path):
    bases = tmp_path / "bases"
    write_bases(bases, 14)
    (bases / "notes.txt").write_text("not an image: ignored, only image files are bases")
    dealt = q.deal_base_images(bases, 64)
    assert sorted(sum(dealt.values(), [])) == sorted(str(p) for p in bases.glob("*.png"))
    assert all(dealt[s] for s in q.SPLITS)
    out = tmp_path / "features.npz"
    q.build_builtin(HEADS, 64, {"train": 6, "val": 3, "test": 3}, 7, out, bases)
    builtin = tmp_path / "builtin.npz"
    q.build_builtin(HEADS, 64, {"train": 6, "val": 3, "test": 3}, 7, builtin)
    with np.load(out) as d, np.load(builtin) as b:
        assert d["x_train"].shape == (6, 64, 64, 3) and d["x_test_cam"].shape == (3, 64, 64, 3)
        assert not np.array_equal(d["x_train"], b["x_train"])
        assert d["p_train"].shape == (6, len(q.PARAMS))


@pytest.mark.parametrize(("setup", "problem"), [
    (lambda d: (d / "photo03.png").write_bytes(b"not a png"), "photo03.png: not a readable image"),
    (lambda d: Image.fromarray(np.zeros((40, 90, 3), np.uint8)).save(d / "photo05.png"),
     "photo05.png: image is 90x40, smaller than the model's 64x64 input"),
    (lambda d: [p.unlink() for p in sorted(d.glob("*.png"))[:6]], "8 images (.png"),
])
def test_bad_base_images_are_one_line(tmp_path, setup, problem):
    bases = tmp_path / "bases"
    write_bases(bases, 14)
    setup(bases)
    with pytest.raises(BuildError) as err:
        q.build_builtin(HEADS, 64, {"train": 6, "val": 3, "test": 3}, 7, tmp_path / "features.npz", bases)
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "features.npz").exists()


def test_base_images_through_the_build_and_refused_for_kws(tmp_path):
    """`--base-images` reaches the quality kind's data stage under a dataset id of its own; a model
    that does not build from base images refuses it before any work."""
    from npubuild.kinds.base import BaseImagesDir
    from npubuild.pipeline import build, dataset_id

    from .conftest import TARGET, make_project

    root = make_project(tmp_path / "project")
    bases = tmp_path / "bases"
    write_bases(bases, 12)
    lines: list[str] = []
    build(root, model="quality", target=TARGET, profile="smoke", data_dir=BaseImagesDir(bases), dry_run=True,
          log=lines.append)
    assert dataset_id(BaseImagesDir(bases)).startswith("bases-") and dataset_id(bases).startswith("dir-")
    assert "[data quality] would run: never built" in lines
    with pytest.raises(BuildError, match=r"^--base-images: model kws \(keyword_spotting\) does not build"):
        build(root, model="kws", target=TARGET, profile="smoke", data_dir=BaseImagesDir(bases), dry_run=True,
              log=lines.append)


def test_views_whole_and_detail():
    """The whole view is the centre square at the model's size; the detail view the centre of the square
    resized to min(detail_side, its side), never enlarged below the model's size."""
    from npubuild.kinds.quality.views import crop_candidates, detail_square, detail_view, photo_views

    assert [detail_square(s, 128, 512) for s in (64, 128, 300, 512, 3000)] == [128, 128, 300, 512, 512]
    assert crop_candidates(512, 128) == [(192, 192), (64, 64), (64, 192), (64, 320), (192, 64), (192, 320),
                                         (320, 64), (320, 192), (320, 320)]
    assert crop_candidates(200, 128) == [(36, 36), (0, 0), (0, 36), (0, 72), (36, 0), (36, 72), (72, 0),
                                         (72, 36), (72, 72)]
    assert crop_candidates(128, 128) == [(0, 0)]
    # a flat photo with one textured patch off the centre: the detail view is the crop that holds it
    rng = np.random.default_rng(3)
    photo = np.full((700, 1000, 3), 120, np.uint8)
    photo[40:200, 190:360] = rng.integers(0, 256, (160, 170, 3), dtype=np.uint8)
    square = photo[:, 150:850].astype(np.float32) / 255.0
    expected = np.round(q.resize(square, 512, 512)[64:192, 64:192] * 255).clip(0, 255).astype(np.uint8)
    assert np.array_equal(detail_view(photo, 128, 512), expected)
    flat = np.full((300, 200, 3), 90, np.uint8)  # no detail anywhere: the centre; short side 200: own pixels
    assert np.array_equal(detail_view(flat, 128, 512), flat[50:250][36:164, 36:164])
    views = photo_views(photo, 128, 512)
    assert views.shape == (2, 128, 128, 3) and np.array_equal(views[0], q.prepare(photo, 128))
    assert photo_views(photo, 128).shape == (1, 128, 128, 3)


def test_labelled_folder_gives_both_views_with_a_detail_side(tmp_path):
    from npubuild.kinds.quality.views import detail_view

    write_folder(tmp_path, GOOD)
    out = tmp_path / "features.npz"
    q.build_from_dir(tmp_path, HEADS, 32, out, detail_side=48)
    x, y = q.load_images(out, "train")
    image = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [[1, 0, 0, 0]] * 2
    assert np.array_equal(x[0], q.prepare(image, 32)) and np.array_equal(x[1], detail_view(image, 32, 48))
