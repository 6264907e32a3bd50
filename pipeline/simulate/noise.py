"""Noise and arc S/N, shared by every backend (pure NumPy, explicit RNG).

The noise model is lenstronomy's ``SingleBand``: images are sky subtracted, in e-/s; each pixel
gets Gaussian noise with variance ``sigma_bkg^2 + max(model, 0) / t_exp`` where
``sigma_bkg^2 = (N_exp * read_noise^2 + t_exp * sky_per_pixel) / t_exp^2`` (sky + read noise)
and the second term is the Gaussian limit of the source's Poisson noise (t_exp summed over the
coadd). We draw it from the caller's ``numpy.random.Generator`` (lenstronomy's own helper uses
the global NumPy RNG).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.simulate.instruments import Band


def noise_sigma(clean: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
    """Per-pixel noise sigma (e-/s) of a noiseless (B, H, W) image."""
    out = np.empty_like(clean, dtype=np.float64)
    for b, band in enumerate(bands):
        out[b] = np.sqrt(band.background_noise**2 + np.clip(clean[b], 0, None) / band.total_exposure)
    return out


def add_noise(rng: np.random.Generator, clean: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
    """Noisy copy of a noiseless (B, H, W) image: sky + read + source Poisson noise."""
    return clean + rng.standard_normal(clean.shape) * noise_sigma(clean, bands)


def arc_snr(arcs: np.ndarray, clean: np.ndarray, bands: Sequence[Band]) -> float:
    """S/N of the lensed arcs: sum(arc flux) / sqrt(sum(variance)) over pixels where the arcs are
    brighter than 1 sigma of the background; bands combined in quadrature (0 when none is)."""
    sigma = noise_sigma(clean, bands)
    total = 0.0
    for b, band in enumerate(bands):
        mask = arcs[b] > band.background_noise
        if mask.any():
            total += arcs[b][mask].sum() ** 2 / (sigma[b][mask] ** 2).sum()
    return float(np.sqrt(total))
