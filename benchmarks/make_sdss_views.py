"""Make the SDSS real-galaxy view used by ``benchmarks/real_sky.py`` (run once; output committed).

Input: the 2,000 Galaxy Zoo 2 SDSS colour JPEGs (424 x 424, 8-bit display stretch, R,G,B = SDSS
i,r,g; each image spans a field scaled to its galaxy) from the public repository
isi-mube/Cosmic-Compendium (see tests/data/README.md for attribution). Output: one cube shard,
``tests/data/real_backgrounds/sdss_gz2_gri64.fits.gz``: every 4th galaxy by GalaxyID (500; the
whole set would be 18 MB, noise does not compress) x 3 (g, r, i) x 64 x 64. ``real_sky.py`` also
takes the JPEG folder itself and then makes the same view of all 2,000 (``views(folder)``).

The view: a centred square crop whose side is drawn per galaxy (seeded by its GalaxyID) uniformly
in [106, 212] native pixels, i.e. 1/4 to 1/2 of the field, then box-averaged to 64 x 64, so the
galaxy spans roughly a quarter to the whole of the cutout, the range of sizes lens galaxies and
the bright galaxies a lens finder meets have in a 64-px survey cutout. Values are the JPEG's
display units, stored as integers (the sky noise is ~4.5 of them, so the rounding adds 0.2% to
its variance).
``benchmarks/real_sky.py`` scores single-band models on the mean of r and i (a VIS-like grey
view) at the model's pixel scale, and g,r,i models on the three bands; the images never enter
training.

    python benchmarks/make_sdss_views.py /path/to/sdss_gz2 [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import shutil

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests/data/real_backgrounds/sdss_gz2_gri64.fits.gz"
SIZE = 64
CROP = (106, 212)


def view(path: pathlib.Path) -> np.ndarray:
    """(3, 64, 64) float32 g, r, i view of one JPEG."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    side = int(np.random.default_rng(int(path.stem)).integers(CROP[0], CROP[1] + 1))
    h, w = rgb.shape[:2]
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    bands = [Image.fromarray(rgb[..., k], mode="F").crop(box).resize((SIZE, SIZE), Image.Resampling.BOX)
             for k in (2, 1, 0)]  # JPEG B, G, R = SDSS g, r, i
    return np.stack([np.asarray(b) for b in bands])


def views(folder: pathlib.Path, every: int = 1) -> tuple[np.ndarray, dict]:
    """Views (N, 3, 64, 64) of every ``every``-th JPEG under ``folder`` (by GalaxyID) + table."""
    files = sorted(pathlib.Path(folder).rglob("*.jpg"), key=lambda p: int(p.stem))[::every]
    if not files:
        raise SystemExit(f"{folder}: no .jpg files")
    table = {"id": np.array([f"sdss-gz2-{f.stem}" for f in files]),
             "gz2_class": np.array([f.parent.name for f in files]),  # spirals / non_spirals
             "is_lens": np.zeros(len(files), np.int64)}
    return np.stack([view(f) for f in files]).astype(np.float32), table


def main() -> None:
    from pipeline.io import write_cube_shard

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdss_dir", type=pathlib.Path, help="folder holding the GZ2 JPEGs (any depth)")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args()
    images, table = views(args.sdss_dir, every=4)
    tmp = args.out.with_suffix("")  # .fits
    write_cube_shard(tmp, images, table, ["g", "r", "i"], overwrite=True, quantum=1.0,
                     header={"ORIGIN": "SDSS via Galaxy Zoo 2 JPEGs (display units)",
                             "VIEW": "crop 1/4-1/2 of field per galaxy, box to 64 px"})
    with open(tmp, "rb") as src, open(args.out, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as dst:
        shutil.copyfileobj(src, dst)  # mtime=0: the same input gives the same bytes
    tmp.unlink()
    print(f"wrote {len(images)} views to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
