"""What a lens finder misses on a simulated TEST split, by the lenses' arc S/N and Einstein radius.

The matched lens sets hold faint arcs on purpose (the priors span faint to bright sources), so
the plain AUC mixes a finder's quality with how many lenses are undetectable at all. This prints,
in one run: AUC and TPR0 of the lenses above each arc S/N threshold against every non-lens (the
model cards' ``auc_snr20`` is the row at 20, one of Collett 2015's detectability criteria), the
completeness at p_lens > 0.5 by arc S/N and by theta_E, the non-lens kinds' flag rates, and how coarse
bfloat16 rounding of the normalised input is against the pixel noise at each lens's Einstein
radius (``--precision bf16`` trains on rounded inputs; is an arc inside a bright deflector lost?).
Sets that record how each lens images its source (``n_images``, ``mu_total``) also get the AUC on
the lenses that pass two of Collett's (2015) detectability criteria: total magnification ≥ 3 and
arc S/N ≥ 20 (the third, arcs resolved beyond the PSF, is not applied).
``--split train --limit 4000`` scores training rows: a finder that fits its training set no
better than its TEST split is limited by capacity or by the data, not by overfitting.

    python benchmarks/detectability.py pipeline/weights/lens-detect data/vis-spiral40k
"""

from __future__ import annotations

import argparse

import numpy as np


def bf16_rounding_to_noise(images, theta_e, config: dict, bands) -> np.ndarray:
    """Per lens: RMS of the bf16 rounding of the normalised input over the pixels within 2 px
    of the Einstein radius (around the cutout centre), in units of those pixels' noise
    (background + source Poisson noise, carried through the asinh normalisation)."""
    import torch

    from pipeline.models.normalize import normalize
    from pipeline.simulate.noise import noise_sigma

    z, sky, bkg = normalize(images, config["normalization"])
    rounding = torch.from_numpy(z).to(torch.bfloat16).float().numpy() - z
    scale = config["normalization"]["asinh_scale"] * bkg[..., None, None]
    u = (images - sky[..., None, None]) / scale  # dz/dx = 1 / (scale * sqrt(1 + u^2))
    sigma_z = np.stack([noise_sigma(np.clip(im, 0, None), bands) for im in images])
    sigma_z = sigma_z / (scale * np.sqrt(1 + u**2))
    h, w = images.shape[-2:]
    r = np.hypot(*np.mgrid[:h, :w] - np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None])
    out = np.empty(len(images))
    for i, t in enumerate(theta_e / config["pixel_scale"]):
        ring = np.abs(r - t) < 2
        out[i] = np.sqrt((rounding[i][:, ring] ** 2).mean() / (sigma_z[i][:, ring] ** 2).mean())
    return out


def main() -> None:
    from pipeline.io.schema import IMAGE, IS_LENS, SNR_ARCS
    from pipeline.metrics import detectable_lens_metrics, lens_subset_metrics
    from pipeline.models import load_checkpoint, predict
    from pipeline.simulate.generate import read_manifest
    from pipeline.simulate.instruments import get_preset
    from pipeline.train.evaluate import collect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data", help="a simulated lens set (its TEST split is scored)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, help="score at most this many rows of the split")
    args = ap.parse_args()
    model, cfg = load_checkpoint(args.checkpoint)
    manifest = read_manifest(args.data)
    imaging = [c for c in ("n_images", "mu_total") if c in manifest["label_columns"]]
    d = collect(args.data, args.split, cfg, extra_columns=(SNR_ARCS, "kind", "theta_e", *imaging),
                limit=args.limit)
    p = predict(model, cfg, d[IMAGE])["p_lens"]
    y, snr = d[IS_LENS].astype(bool), d[SNR_ARCS]
    print(f"{args.checkpoint} on {args.data} ({args.split}): {int(y.sum())} lenses, "
          f"{int((~y).sum())} non-lenses\n")
    # the row at S/N 0 is every lens: the plain AUC and TPR0
    print("| lenses with arc S/N ≥ | fraction of lenses | AUC | TPR0 |\n|---|---|---|---|")
    for lo in (0, 10, 20, 30, 50, 100, 200):
        m = detectable_lens_metrics(y, p, snr, lo)
        n = m[f"n_lens_snr{lo:g}"]
        if n:
            print(f"| {lo} | {n / y.sum():.2f} | {m[f'auc_snr{lo:g}']:.4f} | "
                  f"{m[f'tpr0_snr{lo:g}']:.3f} |")
    if imaging:  # sets made since the simulator records how each lens images its source
        print("\n| lenses | fraction of lenses | AUC | TPR0 |\n|---|---|---|---|")
        for name, sel in (("mu_total ≥ 3", d["mu_total"] >= 3),
                          ("arc S/N ≥ 20 and mu_total ≥ 3",
                           (d["mu_total"] >= 3) & (snr >= 20))):
            m = lens_subset_metrics(y, p, sel)
            print(f"| {name} | {m['n_lens'] / y.sum():.2f} | {m['auc']:.4f} | {m['tpr0']:.3f} |")
    theta = d["theta_e"][y]  # five equal bins over the preset's prior
    bins = [(SNR_ARCS, (0, 10, 20, 50, 100, np.inf)),
            ("theta_e", np.round(np.linspace(theta.min(), theta.max() + 0.01, 6), 2))]
    if imaging:
        bins += [("mu_total", (0, 2, 3, 5, 10, np.inf)), ("n_images", (2, 3, 4, 5, np.inf))]
    for col, edges in bins:
        print(f"\n| lens {col} | n | completeness at p > 0.5 | median p_lens |\n|---|---|---|---|")
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = y & (d[col] >= lo) & (d[col] < hi)
            if m.any():
                print(f"| [{lo:g}, {hi:g}) | {m.sum()} | {np.mean(p[m] > 0.5):.2f} | "
                      f"{np.median(p[m]):.3f} |")
    print("\n| non-lens kind | n | flagged at p > 0.5 | mean p_lens |\n|---|---|---|---|")
    for k in np.unique(d["kind"][~y]):
        m = ~y & (d["kind"] == k)
        print(f"| {k} | {m.sum()} | {np.mean(p[m] > 0.5):.3f} | {p[m].mean():.3f} |")
    q = np.full(len(y), np.nan)  # lenses only
    q[y] = bf16_rounding_to_noise(d[IMAGE][y], d["theta_e"][y], cfg,
                                  get_preset(manifest["preset"]).bands)
    print("\n| bf16 rounding / pixel noise at theta_E | fraction of lenses | AUC |\n|---|---|---|")
    for lo, hi in ((0, 0.1), (0.1, 0.3), (0.3, np.inf)):
        m = lens_subset_metrics(y, p, (q >= lo) & (q < hi))
        if m["n_lens"]:
            print(f"| [{lo:g}, {hi:g}) | {m['n_lens'] / y.sum():.3f} | {m['auc']:.4f} |")


if __name__ == "__main__":
    main()
