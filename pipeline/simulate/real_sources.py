"""Real galaxies as lensed sources (``lensray simulate --sources``).

Lensed sources are not Sérsic profiles with Gaussian clumps: they are irregular, knotty
star-forming galaxies. Given high-resolution stamps of real galaxies (e.g. HST cutouts, at a
finer pixel scale than the survey), every lensed source is one of them: cleaned
(:func:`clean_stamp`: sky subtracted, only the central galaxy's connected light kept, so neither
neighbours nor the stamp's noise are lensed), then placed with lenstronomy's interpolated light
profile (``INTERPOL``) at a random orientation and mirror image, scaled so its half-light
radius is the prior's source size and its flux the prior's source magnitude (colours from the
prior). The lensed stamp is then convolved with the survey's PSF and binned to its pixels, which
is why a stamp at 2-4x finer resolution than the survey is what this needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.simulate.galaxies import Light, mags, u
from pipeline.simulate.instruments import ConfigError, Preset
from pipeline.simulate.priors import Priors

MIN_PIXELS = 20  # a galaxy needs at least this many pixels above the threshold


@dataclass(frozen=True, eq=False)
class SourceStamp:
    """A cleaned galaxy: ``image`` (H, W) >= 0 summing to 1, centred on its light;
    ``r_half`` its half-light radius in stamp pixels; ``name`` where it came from."""

    image: np.ndarray
    r_half: float
    name: str


def clean_stamp(image: np.ndarray, name: str, nsigma: float = 2.0) -> SourceStamp:
    """The central galaxy of a stamp ((H, W), or (B, H, W) summed over bands) without sky,
    noise or neighbours: pixels of the smoothed image above ``nsigma`` times the sky noise,
    connected to the galaxy nearest the centre, grown by two pixels.

    Raises:
        ValueError: naming the stamp, when no galaxy stands above the noise.
    """
    from scipy import ndimage

    from pipeline.io.pixels import image_stats

    x = np.asarray(image, np.float64)
    x = x.sum(0) if x.ndim == 3 else x
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"{name}: a source stamp must be an image of at least 8x8 px, "
                         f"got shape {np.shape(image)}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    sky, noise = (float(v[0, 0]) for v in image_stats(x[None, None]))
    x = x - sky
    # a 1-px Gaussian smoothing leaves 0.28 of the pixel noise: nsigma / 2 pixel sigmas is
    # 3.5 sigma of the smoothed noise for nsigma = 2, so few noise peaks pass on their own
    mask = ndimage.gaussian_filter(x, 1.0) > nsigma * noise / 2
    labels, n = ndimage.label(mask)
    if not n:
        raise ValueError(f"{name}: no galaxy above {nsigma} sigma of the sky noise")
    cy, cx = (np.array(x.shape) - 1) / 2
    idx = np.arange(1, n + 1)
    flux = ndimage.sum(x, labels, idx)
    com = np.array(ndimage.center_of_mass(np.clip(x, 0, None), labels, idx)).reshape(n, 2)
    dist = np.hypot(com[:, 0] - cy, com[:, 1] - cx)
    # the galaxy nearest the centre among the bright ones (not a speck of noise beside it)
    bright = flux >= 0.1 * flux.max()
    keep = idx[bright][np.argmin(dist[bright])]
    mask = ndimage.binary_dilation(labels == keep, iterations=2)
    if mask.sum() < MIN_PIXELS:
        raise ValueError(f"{name}: the central galaxy covers {int(mask.sum())} px "
                         f"(< {MIN_PIXELS}): too small to use as a source")
    x = np.where(mask, np.clip(x, 0, None), 0.0)
    yy, xx = np.indices(x.shape)
    gy, gx = (x * yy).sum() / x.sum(), (x * xx).sum() / x.sum()
    r = np.hypot(yy - gy, xx - gx)
    half = int(math.ceil(r[mask].max())) + 2
    # centre the light on the stamp (integer shift; INTERPOL puts the stamp's centre at the
    # source position) and crop to the galaxy
    pad = np.pad(x, half)
    y0, x0 = int(round(gy)) + half, int(round(gx)) + half
    out = pad[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1]
    order = np.argsort(r[mask])
    cum = np.cumsum(x[mask][order])
    r_half = float(r[mask][order][np.searchsorted(cum, cum[-1] / 2)])
    return SourceStamp(out / out.sum(), max(r_half, 1.0), name)


def read_source_stamps(inputs, bands=None) -> tuple[list[SourceStamp], list[dict]]:
    """Every cutout of ``inputs`` (files, globs, directories, URIs; read by the project's
    reader, every HDU) as a cleaned source stamp; and the cutouts that could not be used, each
    ``{"source": ..., "reason": ...}``.

    Raises:
        ConfigError: when none can be used.
    """
    from pipeline.io import ReadOptions, list_inputs, read_fits_file
    from pipeline.io.schema import ERROR, IMAGE, INDEX

    stamps, skipped = [], []
    for path in list_inputs(inputs).files:
        rows = read_fits_file(path, ReadOptions(bands=bands))
        for image, index, error in zip(rows[IMAGE], rows[INDEX], rows[ERROR], strict=True):
            name = f"{path.rsplit('/', 1)[-1]}[{index}]"
            try:
                if error:
                    raise ValueError(error)
                stamps.append(clean_stamp(image, name))
            except ValueError as e:
                skipped.append({"source": name, "reason": str(e)})
    if not stamps:
        raise ConfigError(f"no usable source stamp in {inputs}: "
                          + "; ".join(s["reason"] for s in skipped[:3]))
    return stamps, skipped


def sources_manifest(inputs, stamps: list[SourceStamp], skipped: list[dict]) -> dict:
    """The manifest's ``sources`` entry: what was given, the stamps (a row's ``source_stamp``
    indexes ``stamps``) and the cutouts that could not be used."""
    return {"inputs": [str(x) for x in np.atleast_1d(inputs)],
            "stamps": [s.name for s in stamps], "skipped": skipped}


def real_source(rng: np.random.Generator, preset: Preset, priors: Priors, mag: float, centre,
                stamps: list[SourceStamp]) -> tuple[list[Light], dict]:
    """A lensed source drawn from ``stamps`` (module doc): random stamp, orientation and mirror
    image; half-light radius from ``priors.r_eff_source``; total magnitude ``mag``."""
    k = int(rng.integers(len(stamps)))
    stamp = stamps[k]
    image = stamp.image[:, ::-1] if rng.random() < 0.5 else stamp.image
    r_eff = u(rng, priors.r_eff_source)
    scale = r_eff / stamp.r_half  # arcsec per stamp pixel
    light = Light("INTERPOL", {"image": image / scale**2, "scale": scale,
                               "phi_G": float(rng.uniform(0, 2 * math.pi)),
                               "center_x": centre[0], "center_y": centre[1]},
                  mags(rng, preset, mag, "blue"))
    return [light], {"r_eff_source": r_eff, "n_clumps": 0, "source_stamp": k}
