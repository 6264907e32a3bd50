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

import numpy as np

from pipeline.io.pixels import image_stats  # noqa: F401  (part of this module's API)

DEFAULT_NORMALIZATION = {"method": "border-mad-asinh", "border": 4, "asinh_scale": 3.0}


def check_normalization(cfg: dict | None) -> dict:
    """``cfg`` (a checkpoint's ``normalization``) with its defaults; ValueError if unknown."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"normalization {cfg!r} is not an object like {DEFAULT_NORMALIZATION}")
    cfg = {**DEFAULT_NORMALIZATION, **(cfg or {})}
    if cfg["method"] != "border-mad-asinh":
        raise ValueError(f"unknown normalization method {cfg['method']!r} (known: border-mad-asinh)")
    return cfg


def normalize(images: np.ndarray, cfg: dict | None = None, stats=None):
    """Normalise (N, B, H, W) images; returns ``(z, sky, noise)``.

    Pass ``stats=(sky, noise)`` to apply another image's statistics (the denoiser's clean target
    is normalised with its noisy input's statistics).
    """
    cfg = check_normalization(cfg)
    x = np.asarray(images, dtype=np.float32)
    sky, noise = stats if stats is not None else image_stats(x, cfg["border"])
    x = np.where(np.isfinite(x), x, sky[..., None, None])
    z = np.arcsinh((x - sky[..., None, None]) / (noise[..., None, None] * cfg["asinh_scale"]))
    return z.astype(np.float32), sky, noise


def denormalize(z: np.ndarray, sky: np.ndarray, noise: np.ndarray, cfg: dict | None = None):
    """Invert :func:`normalize`: back to the input's units."""
    cfg = check_normalization(cfg)
    x = sky[..., None, None] + noise[..., None, None] * cfg["asinh_scale"] * np.sinh(z)
    return x.astype(np.float32)
