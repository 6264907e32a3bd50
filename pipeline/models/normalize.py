"""Unit-free input normalisation, defined once and stored in every checkpoint's config.

Surveys deliver pixels in ADU, e-/s, nanomaggies...; a model that learned the simulator's units
fails on the sky. Per cutout and band we therefore measure a robust sky level (median of a
border frame) and a robust noise (1.4826 x MAD of the same frame), express pixels in noise
units, and compress the dynamic range with asinh so that faint arcs and bright cores both reach
the network::

    z = asinh(((x - sky) / noise) / a)        x = sky + noise * a * sinh(z)

The second form inverts the first exactly, which the denoiser uses to return images in the
input's own units.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_NORMALIZATION = {"method": "border-mad-asinh", "border": 4, "asinh_scale": 3.0}


def _check(cfg: dict) -> dict:
    cfg = {**DEFAULT_NORMALIZATION, **(cfg or {})}
    if cfg["method"] != "border-mad-asinh":
        raise ValueError(f"unknown normalization method {cfg['method']!r} (known: border-mad-asinh)")
    return cfg


def image_stats(images: np.ndarray, border: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Robust sky level and noise per image and band from a frame ``border`` pixels wide.

    ``images`` is (N, B, H, W). Returns ``sky`` and ``noise``, each (N, B). Non-finite pixels are
    ignored (a frame with none finite, the NaN padding of a small cutout, falls back to the whole
    cutout's median and MAD); a noise of zero (noiseless or constant cutouts) falls back to the standard deviation
    of the whole cutout, then to 1, so normalising never divides by zero.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, bands, H, W), got shape {x.shape}")
    n, b, h, w = x.shape
    bw = max(1, min(border, h // 4, w // 4))
    frame = np.concatenate(
        [x[..., :bw, :].reshape(n, b, -1), x[..., -bw:, :].reshape(n, b, -1),
         x[..., bw:-bw, :bw].reshape(n, b, -1), x[..., bw:-bw, -bw:].reshape(n, b, -1)], axis=-1
    )
    flat = x.reshape(n, b, -1)
    with warnings.catch_warnings():  # all-NaN frames are handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(frame, axis=-1)
        noise = 1.4826 * np.nanmedian(np.abs(frame - sky[..., None]), axis=-1)
        blank = ~np.isfinite(sky)  # a frame of padding only (a small cutout fitted to a model)
        if blank.any():
            inner = flat[blank]
            sky[blank] = np.nanmedian(inner, axis=-1)
            noise[blank] = 1.4826 * np.nanmedian(np.abs(inner - sky[blank][:, None]), axis=-1)
        whole = np.nanstd(flat, axis=-1)
    sky = np.where(np.isfinite(sky), sky, 0.0)
    bad = ~(noise > 0) | ~np.isfinite(noise)
    noise = np.where(bad, whole, noise)
    noise = np.where(~(noise > 0) | ~np.isfinite(noise), 1.0, noise)
    return sky.astype(np.float32), noise.astype(np.float32)


def normalize(images: np.ndarray, cfg: dict | None = None, stats=None):
    """Normalise (N, B, H, W) images; returns ``(z, sky, noise)``.

    Pass ``stats=(sky, noise)`` to apply another image's statistics (the denoiser's clean target
    is normalised with its noisy input's statistics).
    """
    cfg = _check(cfg)
    x = np.asarray(images, dtype=np.float32)
    sky, noise = stats if stats is not None else image_stats(x, cfg["border"])
    x = np.where(np.isfinite(x), x, sky[..., None, None])
    z = np.arcsinh((x - sky[..., None, None]) / (noise[..., None, None] * cfg["asinh_scale"]))
    return z.astype(np.float32), sky, noise


def denormalize(z: np.ndarray, sky: np.ndarray, noise: np.ndarray, cfg: dict | None = None):
    """Invert :func:`normalize`: back to the input's units."""
    cfg = _check(cfg)
    x = sky[..., None, None] + noise[..., None, None] * cfg["asinh_scale"] * np.sinh(z)
    return x.astype(np.float32)
