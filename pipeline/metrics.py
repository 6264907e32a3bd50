"""The field's metrics, in one place (pure NumPy, no other lensray import: tasks, training,
evaluation and benchmarks all score with these).

Lens finding follows the Lens Finding Challenge (Metcalf et al. 2019, arXiv 1802.03609): ROC
AUC, TPR0 (fraction of lenses scored above every non-lens) and TPR10 (fraction scored above the
10th-highest non-lens, i.e. fewer than 10 false positives), plus purity at a fixed completeness
for a realistic lens rate. Substructure uses one-vs-rest AUCs; regression reports MAE/MSE next
to a constant predictor's floor and the coverage of predicted Gaussian intervals; denoising
reports PSNR and SSIM (Wang et al. 2004).
"""

from __future__ import annotations

import numpy as np


def _binary(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def _rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(a, kind="mergesort")
    sa = a[order]
    boundaries = np.r_[True, sa[1:] != sa[:-1], True]
    idx = np.flatnonzero(boundaries)
    avg = (idx[:-1] + idx[1:] + 1) / 2.0  # mean of 1-based ranks idx[i]+1 .. idx[i+1]
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, np.diff(idx))
    return ranks


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN if one class is absent."""
    y, s = _binary(y_true, score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (score >= t), and thresholds."""
    y, s = _binary(y_true, score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def tpr_at_fp(y_true, score, max_false_positives: int = 0) -> float:
    """TPR at the lowest threshold that admits at most ``max_false_positives`` non-lenses.

    ``tpr_at_fp(y, s, 0)`` is the challenge's TPR0 (lenses scored strictly above every
    non-lens); ``tpr_at_fp(y, s, 9)`` is TPR10 (fewer than 10 false positives).
    """
    y, s = _binary(y_true, score)
    neg = np.sort(s[~y])[::-1]
    if y.sum() == 0:
        return float("nan")
    if len(neg) <= max_false_positives:
        return 1.0
    return float((s[y] > neg[max_false_positives]).mean())


def purity_at_completeness(y_true, score, completeness: float = 0.5,
                           lens_rate: float = 1e-3) -> tuple[float, float]:
    """Purity of the candidates when the threshold keeps ``completeness`` of the lenses, for a
    population where lenses are a fraction ``lens_rate`` of all cutouts (test sets are balanced,
    surveys are not: purity = c r / (c r + FPR (1 - r))). Returns ``(purity, fpr)``; with no
    false positives in the test set FPR is 0 and purity is an optimistic 1.
    """
    y, s = _binary(y_true, score)
    pos = np.sort(s[y])[::-1]
    k = max(int(np.ceil(completeness * len(pos))), 1)
    threshold = pos[k - 1]
    c = float((s[y] >= threshold).mean())
    fpr = float((s[~y] >= threshold).mean())
    purity = c * lens_rate / (c * lens_rate + fpr * (1 - lens_rate)) if c > 0 else 0.0
    return purity, fpr


def lens_metrics(y_true, score, lens_rate: float = 1e-3) -> dict[str, float]:
    """AUC, TPR0, TPR10 and purity at 50%/90% completeness for ``lens_rate``."""
    p50, f50 = purity_at_completeness(y_true, score, 0.5, lens_rate)
    p90, f90 = purity_at_completeness(y_true, score, 0.9, lens_rate)
    y, _ = _binary(y_true, score)
    return {
        "auc": roc_auc(y_true, score), "tpr0": tpr_at_fp(y_true, score, 0),
        "tpr10": tpr_at_fp(y_true, score, 9),
        "fpr_at_c50": f50, "purity_at_c50": p50, "fpr_at_c90": f90, "purity_at_c90": p90,
        "lens_rate": lens_rate, "n_lens": int(y.sum()), "n_nonlens": int((~y).sum()),
    }


# Collett (2015, LensPop): a lens is detectable when its arcs reach S/N 20, its source is
# magnified at least 3 times and its arcs are resolved (benchmarks/detectability.py adds the
# magnification cut from the sets' mu_total); fainter arcs are in the training sets on purpose.
DETECTABLE_SNR = 20.0


def lens_subset_metrics(y_true, score, lenses) -> dict:
    """AUC and TPR0 of the lenses picked by the mask ``lenses`` against every non-lens, and how
    many they are (``auc``, ``tpr0``, ``n_lens``; only ``n_lens`` when none is picked)."""
    y, s = _binary(y_true, score)
    keep = ~y | np.asarray(lenses, bool)
    n = int((y & keep).sum())
    if not n:
        return {"n_lens": 0}
    return {"auc": roc_auc(y[keep], s[keep]), "tpr0": tpr_at_fp(y[keep], s[keep], 0), "n_lens": n}


def detectable_lens_metrics(y_true, score, snr_arcs, min_snr: float = DETECTABLE_SNR) -> dict:
    """``lens_subset_metrics`` of the lenses whose arcs reach ``min_snr`` (``auc_snr20``,
    ``tpr0_snr20``, ``n_lens_snr20``)."""
    m = lens_subset_metrics(y_true, score, np.asarray(snr_arcs, np.float64) >= min_snr)
    return {f"{k}_snr{min_snr:g}": v for k, v in m.items()}


def multiclass_auc(y_true, probs, classes: list[str] | None = None) -> dict[str, float]:
    """One-vs-rest AUC per class, macro average and micro average (pooled over classes)."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    classes = classes or [str(i) for i in range(k)]
    onehot = np.eye(k, dtype=bool)[y]
    out = {f"auc_{c}": roc_auc(onehot[:, i], p[:, i]) for i, c in enumerate(classes)}
    out["auc_macro"] = float(np.nanmean([out[f"auc_{c}"] for c in classes]))
    out["auc_micro"] = roc_auc(onehot.ravel(), p.ravel())
    out["accuracy"] = float((p.argmax(1) == y).mean())
    return out


def regression_metrics(y_true, mean, sigma=None) -> dict[str, float]:
    """MAE/MSE, the floor of the best constant predictor (median for MAE, mean for MSE) on the
    same rows, and, given ``sigma``, the coverage of the 68.27% and 95.45% Gaussian intervals."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    m = np.asarray(mean, dtype=np.float64).ravel()
    if len(y) == 0:
        return {"n": 0}
    err = m - y
    out = {
        "n": len(y), "mae": float(np.abs(err).mean()), "mse": float((err**2).mean()),
        "mae_floor": float(np.abs(y - np.median(y)).mean()), "mse_floor": float(y.var()),
    }
    out["mae_ratio"] = out["mae"] / out["mae_floor"] if out["mae_floor"] > 0 else float("nan")
    if sigma is not None:
        z = np.abs(err) / np.asarray(sigma, dtype=np.float64).ravel()
        out["coverage68"] = float((z <= 1.0).mean())
        out["coverage95"] = float((z <= 2.0).mean())
    return out


def psnr(clean, test, data_range=None) -> np.ndarray:
    """Peak signal-to-noise ratio per image (dB) over (N, ...) arrays; the data range is each
    clean image's max - min unless given."""
    c = np.asarray(clean, dtype=np.float64).reshape(len(clean), -1)
    t = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    rng = c.max(1) - c.min(1) if data_range is None else np.full(len(c), float(data_range))
    mse = ((c - t) ** 2).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(rng**2 / mse)


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, 'valid' region only."""
    t = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    w = 2 * radius + 1
    v = np.lib.stride_tricks.sliding_window_view(x, w, axis=-1) @ g
    return np.lib.stride_tricks.sliding_window_view(v, w, axis=-2) @ g


def ssim(clean, test, data_range=None) -> np.ndarray:
    """Structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03)
    per image of (N, ..., H, W) arrays, averaged over bands and the valid window positions."""
    c = np.asarray(clean, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    flat = c.reshape(len(c), -1)
    rng = flat.max(1) - flat.min(1) if data_range is None else np.full(len(c), float(data_range))
    rng = rng.reshape((-1,) + (1,) * (c.ndim - 1))
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mu_c, mu_t = _gaussian_filter(c), _gaussian_filter(t)
    var_c = _gaussian_filter(c * c) - mu_c**2
    var_t = _gaussian_filter(t * t) - mu_t**2
    cov = _gaussian_filter(c * t) - mu_c * mu_t
    s = ((2 * mu_c * mu_t + c1) * (2 * cov + c2)) / ((mu_c**2 + mu_t**2 + c1) * (var_c + var_t + c2))
    return s.reshape(len(c), -1).mean(1)


def denoise_metrics(clean, denoised, noisy=None) -> dict[str, float]:
    """Mean PSNR/SSIM of the denoised images and, given the noisy input, of the identity baseline."""
    out = {"psnr": float(np.mean(psnr(clean, denoised))), "ssim": float(np.mean(ssim(clean, denoised)))}
    if noisy is not None:
        out["psnr_input"] = float(np.mean(psnr(clean, noisy)))
        out["ssim_input"] = float(np.mean(ssim(clean, noisy)))
    return out
