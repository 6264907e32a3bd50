"""Figures of metrics, drawn one way everywhere (matplotlib, Agg): ROC curves for
``lensray evaluate`` on simulated splits (``pipeline.train.evaluate``) and on labelled
observed cutouts (``pipeline.evaluate``)."""

from __future__ import annotations

import os
from pathlib import Path


def write_roc(curves: dict, path: str | os.PathLike, title: str) -> Path:
    """ROC curves ``{name: (truth, score)}`` in one PNG at ``path`` (each labelled with its
    AUC and counts); a curve whose truth lacks a class is listed without one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.metrics import roc_auc, roc_curve

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, s) in curves.items():
        y = np.asarray(y).astype(bool)
        label = f"{name} ({int(y.sum())} lenses, {int((~y).sum())} non)"
        if y.all() or not y.any():
            ax.plot([], [], label=f"{label}: no ROC")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{label} AUC {roc_auc(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
