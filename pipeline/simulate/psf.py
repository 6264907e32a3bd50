"""Point-spread functions: real survey PSFs where the project has them, varied per image.

A preset names a PSF library (``pipeline/data/psf/<name>.fits``: a cube shard of normalised
kernels with ``band``, ``pixel_scale`` and ``origin`` columns; see its README) or, without
one, uses a Gaussian of each band's seeing. Every lens-task image draws its own PSF: a library
kernel of its band, widened or narrowed by a factor from ``preset.psf_scale`` and sheared to an
ellipticity up to ``preset.psf_ellipticity`` at a random angle (seeing, focus and tracking vary
from image to image; a network trained on one PSF learns its shape). All bands of an image share
the draw. Pure NumPy/SciPy; renderers call :func:`convolve` after binning to pixels, as
lenstronomy does (``supersampling_convolution=False``).
"""

from __future__ import annotations

import functools
import math
import pathlib

import numpy as np

from pipeline.simulate.instruments import Band, Preset

LIBRARY_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "psf"
FWHM_PER_SIGMA = 2.3548200450309493


def gaussian_kernel(sigma_px: float, half: int | None = None) -> np.ndarray:
    """Normalised round Gaussian kernel, ``2 * half + 1`` pixels wide (default: 5 sigma)."""
    half = int(5 * sigma_px + 0.5) if half is None else half
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma_px) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def nominal_kernel(band: Band) -> np.ndarray:
    """The band's Gaussian PSF (FWHM = ``band.seeing``) at its pixel scale."""
    return gaussian_kernel(band.seeing / FWHM_PER_SIGMA / band.pixel_scale)


def taper(kernel: np.ndarray, inner: float = 0.6) -> np.ndarray:
    """``kernel`` faded to zero at its edge (cosine beyond ``inner`` of its half width), so a
    bright star shows no square where a real PSF image's wings are cut off; normalised."""
    half = kernel.shape[0] // 2
    yy, xx = np.indices(kernel.shape) - half
    r = np.hypot(xx, yy) / half
    w = np.where(r <= inner, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip((r - inner) / (1 - inner), 0, 1))))
    k = np.clip(kernel, 0, None) * w
    return k / k.sum()


@functools.cache
def library(name: str) -> dict[str, tuple[np.ndarray, ...]]:
    """Tapered kernels per band name of the PSF library ``name`` (read once per process)."""
    from pipeline.io import read_fits_file

    path = LIBRARY_DIR / f"{name}.fits"
    rows = read_fits_file(str(path))
    if any(rows["error"]):
        raise ValueError(f"{path}: {next(e for e in rows['error'] if e)}")
    out: dict[str, list[np.ndarray]] = {}
    for kernel, band in zip(rows["image"], rows["band"], strict=True):
        k = np.asarray(kernel[0], dtype=np.float64)
        if k.shape[0] % 2 == 0 or k.shape[0] != k.shape[1]:
            raise ValueError(f"{path}: PSF kernels must be odd and square, got {k.shape}")
        out.setdefault(str(band), []).append(taper(k))
    return {b: tuple(v) for b, v in out.items()}


def distort(kernel: np.ndarray, scale: float, e: float, phi: float) -> np.ndarray:
    """``kernel`` stretched by ``scale * (1 + e)`` along angle ``phi`` and ``scale * (1 - e)``
    across it (bilinear), on a grid grown to hold it; normalised."""
    from scipy.ndimage import affine_transform

    c, s = math.cos(phi), math.sin(phi)
    rot = np.array([[c, -s], [s, c]])
    a = rot @ np.diag([scale * (1 + e), scale * (1 - e)]) @ rot.T  # output = a @ input, in (x, y)
    a = a[::-1, ::-1]  # in the array's (row, column) = (y, x) order
    n_in = kernel.shape[0]
    half = max(1, int(math.ceil((n_in // 2) * scale * (1 + e))))
    n_out = 2 * half + 1
    inv = np.linalg.inv(a)
    centre_in, centre_out = np.full(2, n_in // 2), np.full(2, half)
    out = affine_transform(kernel, inv, offset=centre_in - inv @ centre_out,
                           output_shape=(n_out, n_out), order=1, mode="constant")
    out = np.clip(out, 0, None)
    return out / out.sum()


def draw_psfs(rng: np.random.Generator, preset: Preset) -> list[np.ndarray]:
    """One PSF kernel per band for one image (see the module doc)."""
    lib = library(preset.psf_library) if preset.psf_library else {}
    scale = float(rng.uniform(*preset.psf_scale))
    e = float(rng.uniform(0, preset.psf_ellipticity))
    phi = float(rng.uniform(0, math.pi))
    pick = rng.random()
    kernels = []
    for band in preset.bands:
        choices = lib.get(band.name)
        base = choices[int(pick * len(choices))] if choices else nominal_kernel(band)
        kernels.append(distort(base, scale, e, phi))
    return kernels


def convolve(images: np.ndarray, kernels) -> np.ndarray:
    """(B, H, W) images, each convolved with its band's kernel (same size, zero outside)."""
    from scipy.signal import fftconvolve

    return np.stack([fftconvolve(img, k, mode="same") for img, k in zip(images, kernels, strict=True)])
