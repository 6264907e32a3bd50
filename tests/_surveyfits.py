"""Test helpers for survey geometry: FITS cutouts written with astropy at a chosen pixel scale
(a celestial WCS, or a PIXSCALE keyword, or nothing), 1 or 3 bands, named or not, and small
checkpoints of any geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS


def wcs_header(scale: float, n: int, rotation_deg: float = 0.0) -> fits.Header:
    """A TAN WCS header of an n x n image at ``scale`` arcsec/px (a CD matrix when rotated)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    d = scale / 3600
    if rotation_deg:
        t = np.deg2rad(rotation_deg)
        w.wcs.cd = [[-d * np.cos(t), d * np.sin(t)], [d * np.sin(t), d * np.cos(t)]]
    else:
        w.wcs.cdelt = [-d, d]
    return w.to_header()


def ring(radius_arcsec: float, scale: float, n: int, bands: int = 1, seed: int = 0) -> np.ndarray:
    """(bands, n, n) float32: sky 100, noise 1, a thin ring of ``radius_arcsec`` at the centre."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * scale
    r = np.hypot(yy, xx)
    profile = 200 * np.exp(-0.5 * ((r - radius_arcsec) / max(0.06, scale / 2)) ** 2)
    return (100 + profile + rng.normal(0, 1, (bands, n, n))).astype(np.float32)


def write_cutout(path: Path, image: np.ndarray, *, scale: float | None = None,
                 names: list[str] | None = None, how: str = "wcs") -> Path:
    """One cutout file: ``image`` (bands, H, W) in PRIMARY (a cube for several bands), its
    planes named by BAND1..n keywords if ``names``; pixel scale by a WCS (``how="wcs"``), a
    PIXSCALE keyword (``"keyword"``) or none (``scale=None``)."""
    header = fits.Header()
    if scale is not None:
        header = wcs_header(scale, image.shape[-1]) if how == "wcs" else fits.Header(
            {"PIXSCALE": scale})
    for k, name in enumerate(names or (), start=1):
        header[f"BAND{k}"] = name
    data = image[0] if image.shape[0] == 1 else image
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    return Path(path)


def make_checkpoint(directory: Path, *, bands, pixel_scale: float, size: int,
                    task: str = "lens-detect", seed: int = 0) -> Path:
    """A freshly initialised small checkpoint of ``task`` with this geometry."""
    import torch

    from pipeline import __version__
    from pipeline.models import create_model, save_checkpoint
    from pipeline.models.normalize import DEFAULT_NORMALIZATION

    torch.manual_seed(seed)
    outputs = {"lens-detect": 1, "substructure": 7}[task]
    kwargs = {"in_channels": len(bands), "num_outputs": outputs, "dense": 16}
    model = create_model("lastro_cnn", **kwargs).eval()
    config = {"task": task, "model": "lastro_cnn", "model_kwargs": kwargs, "bands": list(bands),
              "size": size, "pixel_scale": pixel_scale,
              "normalization": dict(DEFAULT_NORMALIZATION), "lensray_version": __version__,
              "trained": {"note": "untrained test checkpoint"}, "metrics": {}}
    return save_checkpoint(model, config, directory)
