"""Pixel policies applied to every cutout as it is read (non-finite pixels, fixed sizes), and the
robust sky/noise statistics of a cutout that normalisation, the simulator's injections and the
classical baseline share (:func:`image_stats`).

Both are explicit and documented (docs/io.md) because they change pixels:

* **Non-finite pixels** (NaN, +-inf: masked or uncovered sky). A cutout with more than
  ``max_nonfinite`` (a fraction, default 10 %) non-finite pixels in any band is an error row; below
  that, they are replaced by the median of the band's finite pixels (the sky level), which is what a
  robust sky/noise normalisation later treats as empty sky. A band with no finite pixel is an error.
* **Size** ``size=N``: centre-crop or pad, never resample. The input's centre pixel ``(H//2, W//2)``
  lands on the output's centre pixel ``(N//2, N//2)``; padding is filled with the band's median
  (sky level, not 0, so unsubtracted images do not get a hard step at the border).
"""

from __future__ import annotations

import warnings

import numpy as np


def band_median(images: np.ndarray) -> np.ndarray:
    """Median over the last two axes, ignoring non-finite pixels; keeps dims for broadcasting."""
    flat = images.reshape(*images.shape[:-2], -1)
    if np.isfinite(flat).all():
        med = np.median(flat, axis=-1)
    else:
        masked = np.where(np.isfinite(flat), flat, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN band: an error row anyway
            med = np.nanmedian(masked, axis=-1) if masked.size else np.zeros(flat.shape[:-1])
        med = np.nan_to_num(med, nan=0.0)
    return med[..., None, None].astype(images.dtype, copy=False)


def centre_crop_or_pad(images: np.ndarray, size: int, fill: np.ndarray | float = 0.0) -> np.ndarray:
    """Centre-crop and/or pad the last two axes of ``images`` to ``size`` x ``size``.

    ``out[..., i, j] = images[..., i + H//2 - size//2, j + W//2 - size//2]`` where that index is
    inside the input, else ``fill`` (a scalar or an array broadcastable to ``images[..., :1, :1]``).
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    out = np.empty((*images.shape[:-2], size, size), dtype=images.dtype)
    out[...] = fill
    dy, dx = h // 2 - size // 2, w // 2 - size // 2  # input index = output index + offset
    oy0, ox0 = max(0, -dy), max(0, -dx)
    oy1, ox1 = min(size, h - dy), min(size, w - dx)
    if oy1 > oy0 and ox1 > ox0:
        out[..., oy0:oy1, ox0:ox1] = images[..., oy0 + dy : oy1 + dy, ox0 + dx : ox1 + dx]
    return out


def fix_nonfinite(images: np.ndarray, max_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply the non-finite policy to a stack of cutouts (N, B, H, W).

    Returns ``(images, reasons)``: images with allowed non-finite pixels replaced by their band's
    median of finite pixels, and an object array of N error reasons (None for a good cutout).
    """
    reasons = np.full(images.shape[0], None, dtype=object)
    finite = np.isfinite(images)
    if finite.all():
        return images, reasons
    npix = images.shape[-1] * images.shape[-2]
    bad_frac = 1.0 - finite.reshape(*images.shape[:2], -1).sum(axis=-1) / max(npix, 1)  # (N, B)
    worst = bad_frac.max(axis=1)
    for i in np.flatnonzero((worst > max_fraction) | (worst >= 1.0)):
        b = int(bad_frac[i].argmax())
        reasons[i] = (
            f"{100 * worst[i]:.1f}% non-finite pixels in band {b} "
            f"(more than max_nonfinite={max_fraction:g})"
        )
    rows = np.flatnonzero(worst > 0)  # medians only where needed (nanmedian is slow)
    images = images.copy()
    images[rows] = np.where(finite[rows], images[rows], band_median(images[rows]))
    return images, reasons


def image_stats(images: np.ndarray, border: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Robust sky level and noise per image and band from a frame ``border`` pixels wide.

    ``images`` is (N, B, H, W). Returns ``sky`` and ``noise``, each (N, B). Non-finite pixels are
    ignored; a noise of zero (noiseless or constant cutouts) falls back to the standard deviation
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
    with warnings.catch_warnings():  # all-NaN frames are handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        sky = np.nanmedian(frame, axis=-1)
        noise = 1.4826 * np.nanmedian(np.abs(frame - sky[..., None]), axis=-1)
        whole = np.nanstd(x.reshape(n, b, -1), axis=-1)
    sky = np.where(np.isfinite(sky), sky, 0.0)
    bad = ~(noise > 0) | ~np.isfinite(noise)
    noise = np.where(bad, whole, noise)
    noise = np.where(~(noise > 0) | ~np.isfinite(noise), 1.0, noise)
    return sky.astype(np.float32), noise.astype(np.float32)
