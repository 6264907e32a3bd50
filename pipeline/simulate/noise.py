"""Noise and arc S/N, shared by every backend (pure NumPy, explicit RNG).

The noise model is lenstronomy's ``SingleBand``: images are sky subtracted, in e-/s; each pixel
gets Gaussian noise with variance ``sigma_bkg^2 + max(model, 0) / t_exp`` where
``sigma_bkg^2 = (N_exp * read_noise^2 + t_exp * sky_per_pixel) / t_exp^2`` (sky + read noise)
and the second term is the Gaussian limit of the source's Poisson noise (t_exp summed over the
coadd). We draw it from the caller's ``numpy.random.Generator`` (lenstronomy's own helper uses
the global NumPy RNG).

Resampled and drizzled survey images have correlated noise: with ``corr = a > 0`` the unit
white field is smoothed by the separable kernel [a, 1, a] x [a, 1, a] (normalised to keep unit
variance) before it is scaled by sigma, which gives neighbouring pixels a correlation
2a / (1 + 2a^2) and leaves the per-pixel sigma as modelled.
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


def correlated_normal(rng: np.random.Generator, shape, corr: float = 0.0) -> np.ndarray:
    """Unit-variance Gaussian noise of ``shape`` (..., H, W), correlated between neighbouring
    pixels by the kernel weight ``corr`` (0: white)."""
    z = rng.standard_normal(shape)
    if corr <= 0:
        return z
    from scipy.ndimage import convolve1d

    k = np.array([corr, 1.0, corr]) / np.sqrt(1 + 2 * corr**2)
    return convolve1d(convolve1d(z, k, axis=-1, mode="wrap"), k, axis=-2, mode="wrap")


def add_noise(rng: np.random.Generator, clean: np.ndarray, bands: Sequence[Band],
              corr: float = 0.0) -> np.ndarray:
    """Noisy copy of a noiseless (B, H, W) image: sky + read + source Poisson noise, correlated
    between neighbouring pixels by ``corr`` (module doc)."""
    return clean + correlated_normal(rng, clean.shape, corr) * noise_sigma(clean, bands)


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
