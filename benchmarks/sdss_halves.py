"""Split the committed SDSS view into an adaptation target and a held-out half (by a fixed rule).

``lensray train --adapt`` learns from a survey's unlabeled cutouts; to measure it honestly on
real galaxies, the galaxies it adapts to must not be the ones it is scored on. This writes, from
the 500 Galaxy Zoo 2 galaxies of ``tests/data/real_backgrounds/sdss_gz2_gri64.fits.gz``
(``benchmarks/make_sdss_views.py``):

- ``OUT/sdss_vis_even.fits``: the even-indexed galaxies as a VIS-like survey's unlabeled cutouts
  (mean of r and i, band VIS, PIXSCALE = ``--pixel-scale``: the view ``real_sky.py`` gives a
  single-band model, at that model's pixel scale, so nothing is resampled): the ``--adapt`` input;
- ``OUT/sdss_gri_odd.fits``: the odd-indexed galaxies, g,r,i as the committed view: the
  ``benchmarks/real_sky.py --sdss`` input, never seen in adaptation (with the Galaxy Zoo class,
  so the flag rate is also given for spirals and non-spirals).

With ``--jpegs DIR`` (the folder of all 2,000 Galaxy Zoo 2 JPEGs) it also writes
``OUT/sdss_gri_heldout.fits``: the view of every galaxy but the 250 targets (1,750, a held-out
set seven times larger, with their class).

    python benchmarks/sdss_halves.py --out /tmp/sdss-halves [--jpegs /path/to/sdss_gz2]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from real_sky import SDSS_VIEW


def main() -> None:
    from astropy.io import fits
    from astropy.table import Table

    from pipeline.io import write_cube_shard

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--pixel-scale", type=float, default=0.101,
                    help="arcsec/px written for the VIS-like target view (default: euclid-vis's)")
    ap.add_argument("--jpegs", type=pathlib.Path, default=None,
                    help="folder of the 2,000 GZ2 JPEGs: also write sdss_gri_heldout.fits")
    args = ap.parse_args()
    with fits.open(SDSS_VIEW) as hdul:
        gri = np.asarray(hdul["CUTOUTS"].data, np.float32)
        table = Table(hdul["CATALOG"].data)
    ids = np.asarray(table["id"]).astype(str)
    even, odd = np.arange(0, len(gri), 2), np.arange(1, len(gri), 2)
    target = write_cube_shard(args.out / "sdss_vis_even.fits", gri[even, 1:].mean(1, keepdims=True),
                              {"id": ids[even]}, ["VIS"], overwrite=True,
                              pixel_scale=args.pixel_scale,
                              header={"ORIGIN": "SDSS GZ2 view, even rows, mean of r and i"})
    held = write_cube_shard(args.out / "sdss_gri_odd.fits", gri[odd],
                            {"id": ids[odd], "gz2_class": np.asarray(table["gz2_class"]).astype(str)[odd],
                             "is_lens": np.zeros(len(odd), np.int64)},
                            ["g", "r", "i"], overwrite=True,
                            header={"ORIGIN": "SDSS GZ2 view, odd rows"})
    print(f"wrote {len(even)} target cutouts to {target} and {len(odd)} held-out to {held}")
    if args.jpegs:
        from make_sdss_views import views

        all_gri, tab = views(args.jpegs)
        keep = ~np.isin(tab["id"], ids[even])  # every galaxy the adaptation did not see
        big = write_cube_shard(args.out / "sdss_gri_heldout.fits", all_gri[keep],
                               {k: np.asarray(v)[keep] for k, v in tab.items()}, ["g", "r", "i"],
                               overwrite=True, header={"ORIGIN": "SDSS GZ2 views, all but the "
                                                                 "adaptation targets"})
        print(f"wrote {int(keep.sum())} held-out views of the JPEGs to {big}")


if __name__ == "__main__":
    main()
