"""What a lens finder misses on a simulated TEST split, by the lenses' arc S/N and Einstein radius.

The matched lens sets hold faint arcs on purpose (the priors span faint to bright sources), so
the plain AUC mixes a finder's quality with how many lenses are undetectable at all. This prints,
in one run: AUC and TPR0 of the lenses above each arc S/N threshold against every non-lens (the
model cards' ``auc_snr20`` is the row at 20, Collett 2015's detectability cut), the completeness
at p_lens > 0.5 by arc S/N and by theta_E, and the non-lens kinds' flag rates.

    python benchmarks/detectability.py pipeline/weights/lens-detect data/vis-spiral40k
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from pipeline.io.schema import IMAGE, IS_LENS, SNR_ARCS
    from pipeline.metrics import detectable_lens_metrics
    from pipeline.models import load_checkpoint, predict
    from pipeline.train.evaluate import collect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data", help="a simulated lens set (its TEST split is scored)")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    model, cfg = load_checkpoint(args.checkpoint)
    d = collect(args.data, args.split, cfg, extra_columns=(SNR_ARCS, "kind", "theta_e"))
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
    theta = d["theta_e"][y]  # five equal bins over the preset's prior
    for col, edges in ((SNR_ARCS, (0, 10, 20, 50, 100, np.inf)),
                       ("theta_e", np.round(np.linspace(theta.min(), theta.max() + 0.01, 6), 2))):
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


if __name__ == "__main__":
    main()
