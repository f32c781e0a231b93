"""Make the three real-photo folders that docs/models/quality.md measures the quality model on.

The photos are not part of the project: 29 sample photos that Debian's `opencv-doc` package ships
(`/usr/share/doc/opencv-doc/examples/data/`) and four that scikit-image's wheel bundles
(`skimage.data`: camera, cell, grass and the motion-blurred clock). Their labels are in `real-photos-labels.csv` beside this file.

    apt-get install opencv-doc
    python benchmarks/real_photos.py /usr/share/doc/opencv-doc/examples/data OUT
    invoke evaluate --model quality --data-dir OUT/real        # and OUT/camscale, OUT/expo

- `real/`: the 33 photos as they are (4 blurry: camera shake or defocus in the photo itself);
- `camscale/`: every sharp one as it is, shaken over 1% of its short side and defocused by a disc of
  0.5% of its short side, in linear light at the photo's own size (blur as its camera would make it),
  JPEG quality 90; labels: blurry for the two blurred copies;
- `expo/`: every photo 2.5 stops darker and 1.5 stops brighter in linear light (clipped), JPEG 90.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from npubuild.kinds.quality.camera import Shot, blur_linear, expose, to_linear, to_srgb
from npubuild.kinds.quality.data import read_photo

LABELS = Path(__file__).with_name("real-photos-labels.csv")
HEADER = "file,blurry,too_dark,too_bright,noisy\n"


def _save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)


def _write_labels(folder: Path, rows: list[tuple]) -> None:
    (folder / "labels.csv").write_text(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))


def main(opencv_data: Path, out: Path) -> None:
    rows = list(csv.DictReader(LABELS.open()))
    real, camscale, expo = out / "real", out / "camscale", out / "expo"
    for folder in (real, camscale, expo):
        folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        name = r["file"]
        if name.startswith("skimage_"):
            Image.fromarray(getattr(skimage.data, Path(name).stem.removeprefix("skimage_"))()).save(real / name)
        else:
            source = opencv_data / name
            if not source.is_file():
                source = Path(skimage.data.__file__).parent / name
            if not source.is_file():
                sys.exit(f"error: {opencv_data / name}: not found (install opencv-doc, or give its examples/data folder)")
            shutil.copyfile(source, real / name)
    _write_labels(real, [(r["file"], r["blurry"], r["too_dark"], r["too_bright"], r["noisy"]) for r in rows])

    blurred = []
    for i, r in enumerate(x for x in rows if x["blurry"] == "0"):
        photo = read_photo(real / r["file"])
        side = min(photo.shape[:2])
        for kind, px in (("none", 0.0), ("shake", 0.01 * side), ("defocus", 0.005 * side)):
            image = photo if kind == "none" else to_srgb(
                blur_linear(to_linear(photo), Shot(kind, px, 1000 + i, 0.0, 0.0, 0.0, "srgb", 90)))
            name = f"{Path(r['file']).stem}_{kind}.jpg"
            _save(image, camscale / name)
            blurred.append((name, int(kind != "none"), 0, 0, 0))
    _write_labels(camscale, blurred)

    exposed = []
    for r in rows:
        photo = read_photo(real / r["file"])
        for ev, dark, bright in ((-2.5, 1, 0), (1.5, 0, 1)):
            name = f"{Path(r['file']).stem}_{'dark' if dark else 'bright'}.jpg"
            _save(to_srgb(expose(to_linear(photo), ev)), expo / name)
            exposed.append((name, r["blurry"], dark, bright, 0))
    _write_labels(expo, exposed)
    print(f"{out}: real {len(rows)}, camscale {len(blurred)}, expo {len(exposed)} images")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/real_photos.py OPENCV_DOC_EXAMPLES_DATA OUT")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
