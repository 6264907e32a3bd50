"""How well could an ideal reader of the vortex do? The axion-mass MAE of oracles, vs the floor.

    python benchmarks/axion_oracle.py data/euclid-sub-m48k

The simulator draws log10 m_axion, turns it into a de Broglie length (kpc) with the lens's
velocity dispersion, and into arcsec with the lens redshift. An image shows the vortex's angular
length at best, not the redshift. This script predicts log10 m_axion on the TEST split's vortex
rows from simulation truths with a k-nearest-neighbour median fitted on the TRAIN split:

* the angular length alone; the length read only above 2, 3 or 5 pixels (shorter vortices look
  alike); length + Einstein radius; and length + both redshifts (not in the image: the scatter the
  redshifts cause).

It prints MAE / constant-predictor floor for each: how far a network is from what the
simulations allow, measured rather than assumed.
"""

from __future__ import annotations

import argparse

import numpy as np

FEATURES = ("log10_m_axion", "vortex_length", "theta_e", "z_lens", "z_source")


def vortex_rows(data_dir: str, split: str) -> dict[str, np.ndarray]:
    """Simulation truths of the vortex-class rows of one split."""
    from pipeline.io import read_fits_file
    from pipeline.train.data import split_paths

    parts = []
    for path in split_paths(data_dir, split):
        rows = read_fits_file(path)
        keep = np.asarray(rows["substructure_class"]).astype(str) == "vortex"
        parts.append({k: np.asarray(rows[k], dtype=float)[keep] for k in FEATURES})
    return {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}


def knn_median(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int = 25) -> np.ndarray:
    """Median target of the k nearest training rows (features standardised on the train set)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    out = np.empty(len(b))
    for i in range(0, len(b), 512):
        d = ((b[i : i + 512, None] - a[None]) ** 2).sum(-1)
        out[i : i + 512] = np.median(y_train[np.argpartition(d, k, 1)[:, :k]], 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="a substructure data dir written by `lensray simulate`")
    ap.add_argument("--pixel-scale", type=float, default=0.1, help='arcsec per pixel (0.1 for VIS)')
    args = ap.parse_args(argv)

    tr, te = vortex_rows(args.data, "train"), vortex_rows(args.data, "test")
    y_tr, y_te = tr["log10_m_axion"], te["log10_m_axion"]
    floor = float(np.abs(y_te - np.median(y_tr)).mean())

    def feats(d, names, min_px=0.0):
        cols = [np.log10(np.maximum(d["vortex_length"], min_px * args.pixel_scale))]
        cols += [np.log10(d[n]) if n == "theta_e" else d[n] for n in names]
        return np.stack(cols, 1)

    oracles = {"angular length": ([], 0), "length, read above 2 px": ([], 2),
               "length, read above 3 px": ([], 3), "length, read above 5 px": ([], 5),
               "length + Einstein radius": (["theta_e"], 0),
               "length + both redshifts (not in an image)": (["z_lens", "z_source"], 0)}
    print(f"{args.data}: {len(y_tr)} train / {len(y_te)} test vortex rows; "
          f"constant-predictor MAE (floor) {floor:.3f}")
    print("| oracle | MAE | MAE / floor |\n|---|---:|---:|")
    for label, (names, min_px) in oracles.items():
        pred = knn_median(feats(tr, names, min_px), y_tr, feats(te, names, min_px))
        mae = float(np.abs(pred - y_te).mean())
        print(f"| {label} | {mae:.3f} | {mae / floor:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
