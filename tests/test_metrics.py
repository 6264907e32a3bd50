"""The field's metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline import metrics as M


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + y, 1)  # many ties
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(M.roc_auc(np.ones(3), [0.1, 0.2, 0.3]))


def test_tpr0_tpr10_hand_case():
    # 4 lenses, 12 non-lenses; the best non-lens scores 0.9, the 10th-best 0.45
    neg = [0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.52, 0.5, 0.48, 0.45, 0.1, 0.05]
    pos = [0.95, 0.85, 0.46, 0.2]
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    s = np.r_[neg, pos]
    assert M.tpr_at_fp(y, s, 0) == 0.25  # only 0.95 beats every non-lens
    assert M.tpr_at_fp(y, s, 9) == 0.75  # above 0.45: 9 false positives (< 10)
    fpr, tpr, _ = M.roc_curve(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)


def test_purity_at_completeness_for_a_lens_rate():
    y = np.r_[np.ones(10), np.zeros(100)]
    s = np.r_[np.linspace(1, 0.55, 10), np.linspace(0.6, 0, 100)]
    # 50% completeness: threshold = 5th lens score 0.8; no non-lens above -> purity 1
    purity, fpr = M.purity_at_completeness(y, s, 0.5, 1e-3)
    assert fpr == 0 and purity == 1
    # 100% completeness: threshold 0.55 admits non-lenses with score >= 0.55 (0.6..0.5545: 8/100)
    purity, fpr = M.purity_at_completeness(y, s, 1.0, 1e-3)
    assert fpr == pytest.approx((np.linspace(0.6, 0, 100) >= 0.55).mean())
    assert purity == pytest.approx(1e-3 / (1e-3 + fpr * (1 - 1e-3)))


def test_detectable_lens_metrics_keep_every_non_lens_and_the_bright_arcs():
    y = np.r_[np.zeros(4), np.ones(4)]
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.8, 0.5, 0.05])
    snr = np.array([0, 0, 0, 0, 150, 40, 19.9, 5])  # non-lenses carry no arc S/N
    got = M.detectable_lens_metrics(y, s, snr)
    assert got["n_lens_snr20"] == 2 and got["auc_snr20"] == 1.0 and got["tpr0_snr20"] == 1.0
    assert M.roc_auc(y, s) < 1  # the two faint lenses are what lowers the plain AUC
    assert M.detectable_lens_metrics(y, s, snr, min_snr=1000) == {"n_lens_snr1000": 0}


def test_multiclass_auc_matches_sklearn_ovr():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = M.multiclass_auc(y, p, ["no_sub", "cdm", "vortex"])
    assert out["auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert out["auc_cdm"] == pytest.approx(roc_auc_score(y == 1, p[:, 1]), abs=1e-12)
    assert out["auc_micro"] == pytest.approx(
        roc_auc_score(np.eye(3)[y].ravel(), p.ravel()), abs=1e-12)


def test_regression_floor_and_coverage():
    rng = np.random.default_rng(3)
    y = rng.uniform(-24, -22, 20000)  # uniform over 2 dex: constant-predictor MAE 0.5, MSE 1/3
    sigma = np.full_like(y, 0.1)
    mean = y + sigma * rng.standard_normal(len(y))  # calibrated Gaussian errors
    out = M.regression_metrics(y, mean, sigma)
    assert out["mae_floor"] == pytest.approx(0.5, rel=0.02)
    assert out["mse_floor"] == pytest.approx(1 / 3, rel=0.03)
    assert out["mae"] == pytest.approx(0.1 * np.sqrt(2 / np.pi), rel=0.03)
    assert out["coverage68"] == pytest.approx(0.6827, abs=0.01)
    assert out["coverage95"] == pytest.approx(0.9545, abs=0.01)
    over = M.regression_metrics(y, mean, sigma * 3)  # over-wide intervals over-cover
    assert over["coverage68"] > 0.95


def test_psnr_and_ssim_hand_cases():
    rng = np.random.default_rng(4)
    clean = rng.uniform(0, 1, (3, 1, 32, 32))
    clean[:, :, 0, 0], clean[:, :, 0, 1] = 0.0, 1.0  # data range exactly 1
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    mse = ((noisy - clean) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(M.psnr(clean, noisy), 10 * np.log10(1 / mse))
    np.testing.assert_allclose(M.ssim(clean, clean), 1.0)
    s_small = M.ssim(clean, clean + 0.05 * rng.standard_normal(clean.shape))
    s_big = M.ssim(clean, clean + 0.3 * rng.standard_normal(clean.shape))
    assert np.all(s_big < s_small) and np.all(s_small < 1)
    # SSIM of a constant offset: luminance term only, hand-computed for flat images
    a, b = np.full((1, 1, 16, 16), 0.2), np.full((1, 1, 16, 16), 0.4)
    c1 = (0.01 * 1.0) ** 2
    expect = (2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    assert M.ssim(a, b, data_range=1.0)[0] == pytest.approx(expect)
