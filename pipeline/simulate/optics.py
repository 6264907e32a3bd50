"""From a scene's pixel light to what the telescope records, before noise (shared by backends).

A renderer turns a scene's light profiles into pixels (binned from its supersampled grid, no
PSF). :func:`observe` then applies, in the order light meets them: the deflector's dust lane
(absorbs its own light), foreground stars with their diffraction spikes, and the image's PSF
(``scene.psf``, else each band's nominal Gaussian). Pure NumPy, so lenstronomy and caustics
scenes are observed by the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.simulate import psf as _psf
from pipeline.simulate.instruments import Preset
from pipeline.simulate.scenes import Scene

SPIKE_FLUX = 0.02  # fraction of a star's flux in its diffraction spikes (all spikes together)
DUST_REDDENING = {"g": 1.3, "r": 1.0, "i": 0.8}  # optical depth relative to the reference band


@dataclass
class Rendered:
    """Noiseless images (B, H, W) in e-/s: the total and the lensed-source part alone."""

    clean: np.ndarray
    arcs: np.ndarray


def _deposit(img: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, flux: np.ndarray) -> None:
    """Add point fluxes at fractional pixel positions, split bilinearly over 4 pixels."""
    n = img.shape[-1]
    x0, y0 = np.floor(x_px).astype(int), np.floor(y_px).astype(int)
    fx, fy = x_px - x0, y_px - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
        np.add.at(img, (yi[ok], xi[ok]), (flux * w)[ok])


def to_pixels(preset: Preset, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Angular (x, y) in arcsec (lenstronomy's grid: origin at the cutout centre) -> pixel
    column, row."""
    c = (preset.size - 1) / 2
    return np.asarray(x) / preset.pixel_scale + c, np.asarray(y) / preset.pixel_scale + c


def stars_image(scene: Scene, preset: Preset) -> np.ndarray:
    """Unconvolved (B, H, W) image of the scene's stars: a point each, plus ``preset.spikes``
    diffraction spikes whose length grows with the star's flux and brightness falls as 1/r."""
    img = np.zeros((len(preset.bands), preset.size, preset.size))
    for star in scene.stars:
        x, y = to_pixels(preset, star["x"], star["y"])
        for b, band in enumerate(preset.bands):
            flux = float(band.mag_to_cps(star["mags"][band.name]))
            _deposit(img[b], np.array([x]), np.array([y]), np.array([flux * (1 - SPIKE_FLUX)]))
            if not preset.spikes:
                continue
            length = min(preset.size, 3 + 2 * math.sqrt(flux / band.background_noise) ** 0.5)
            r = np.arange(1.0, length, 0.5)
            w = 1 / r
            w = w / (w.sum() * preset.spikes)
            for k in range(preset.spikes):
                a = star["spike_angle"] + 2 * math.pi * k / preset.spikes
                _deposit(img[b], x + r * math.cos(a), y + r * math.sin(a), flux * SPIKE_FLUX * w)
    return img


def dust_transmission(scene: Scene, preset: Preset) -> np.ndarray:
    """(B, H, W) fraction of the deflector's light that passes its dust lane (1: no dust): a
    Gaussian lane along the disk's major axis, fading beyond ``length`` along it."""
    d = scene.dust
    out = np.ones((len(preset.bands), preset.size, preset.size))
    if not d:
        return out
    c = (preset.size - 1) / 2
    yy, xx = (np.indices((preset.size, preset.size)) - c) * preset.pixel_scale
    dx, dy = xx - d["x"], yy - d["y"]
    ca, sa = math.cos(d["phi"]), math.sin(d["phi"])
    along, across = dx * ca + dy * sa, -dx * sa + dy * ca - d["offset"]
    lane = np.exp(-0.5 * (across / d["width"]) ** 2 - 0.5 * (along / d["length"]) ** 2)
    for b, band in enumerate(preset.bands):
        tau = d["tau"] * DUST_REDDENING.get(band.name, 1.0)
        out[b] = np.exp(-tau * lane)
    return out


def observe(scene: Scene, light: np.ndarray, arcs: np.ndarray, preset: Preset) -> Rendered:
    """Pixel light of the unlensed (``light``) and lensed (``arcs``) parts, (B, H, W) e-/s
    without PSF -> what the telescope records before noise (see the module doc)."""
    light = light * dust_transmission(scene, preset) + stars_image(scene, preset)
    kernels = scene.psf or [_psf.nominal_kernel(b) for b in preset.bands]
    arcs = _psf.convolve(arcs, kernels) if arcs.any() else arcs
    return Rendered(_psf.convolve(light, kernels) + arcs, arcs)
