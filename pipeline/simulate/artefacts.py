"""Detector artefacts added after the noise (pure NumPy, the row's own RNG).

What a lens finder meets in real cutouts and must not call arcs: residual cosmic rays (sharp
tracks, never PSF-smoothed; space presets), hot pixels, satellite trails (ground), and saturated
stars (flat-topped cores clipped at the preset's saturation level). Rates and levels are
instrument facts in the preset (``instruments.py``).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.simulate.instruments import Preset

HOT_PIXELS = 0.3  # mean hot pixels per cutout and band (Poisson)
STRENGTH = (5.0, 60.0)  # amplitude of artefacts, in units of the band's background sigma


def _line(n: int, length: float, x0: float, y0: float, angle: float):
    """Pixel indices (rows, cols) of a one-pixel-wide straight track."""
    t = np.arange(0.0, max(length, 1.0), 0.5)
    x = np.round(x0 + t * math.cos(angle)).astype(int)
    y = np.round(y0 + t * math.sin(angle)).astype(int)
    ok = (x >= 0) & (x < n) & (y >= 0) & (y < n)
    idx = np.unique(np.stack([y[ok], x[ok]]), axis=1)
    return idx[0], idx[1]


def add_artefacts(rng: np.random.Generator, image: np.ndarray, preset: Preset) -> dict[str, int]:
    """Add cosmic rays, hot pixels and satellite trails to a noisy (B, H, W) image in place
    (each on one band: they come from single exposures) and clip it at the saturation level.
    Returns how many of each were added."""
    nb, n = image.shape[0], image.shape[-1]
    sig = [b.background_noise for b in preset.bands]
    counts = {"cosmic_rays": int(rng.poisson(preset.cosmic_rays)),
              "hot_pixels": int(rng.poisson(HOT_PIXELS * nb)),
              "trails": int(rng.poisson(preset.trails))}
    for _ in range(counts["cosmic_rays"]):
        b = int(rng.integers(nb))
        rows, cols = _line(n, rng.uniform(1, 8), rng.uniform(0, n), rng.uniform(0, n),
                           rng.uniform(0, 2 * math.pi))
        image[b, rows, cols] += rng.uniform(*STRENGTH, size=len(rows)) * sig[b]
    for _ in range(counts["hot_pixels"]):
        b = int(rng.integers(nb))
        image[b, rng.integers(n), rng.integers(n)] += rng.uniform(*STRENGTH) * sig[b]
    for _ in range(counts["trails"]):
        b = int(rng.integers(nb))
        angle = rng.uniform(0, math.pi)
        # a line through a random point, long enough to cross the cutout, a few pixels wide
        x0, y0 = rng.uniform(0, n), rng.uniform(0, n)
        level = rng.uniform(2.0, 20.0) * sig[b]
        for w in (-1, 0, 1):
            rows, cols = _line(n, 3 * n, x0 - 1.5 * n * math.cos(angle) - w * math.sin(angle),
                               y0 - 1.5 * n * math.sin(angle) + w * math.cos(angle), angle)
            image[b, rows, cols] += level * (0.5 if w else 1.0)
    if preset.saturation is not None:
        np.minimum(image, preset.saturation, out=image)
    return counts
