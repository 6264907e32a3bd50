"""Instrument presets: one small config object per survey, like lenstronomy's ObservationConfig.

Numbers come from ``lenstronomy.SimulationAPI.ObservationConfig`` (copied here so a preset is
plain data that goes into the manifest); the few overrides are commented where they are made.
Pixel values of every simulated image are in e-/s (counts per second, sky subtracted).

================  =========  ======  ======  =====================================
preset            bands      "/px    FWHM "  source of the numbers
================  =========  ======  ======  =====================================
``hst``           F160W      0.08    0.15    lenstronomy HST WFC3_F160W (2 orbits)
``euclid-vis``    VIS        0.101   0.16    lenstronomy Euclid VIS (4 x 566 s)
``ground-gri``    g, r, i    0.2     0.71-77 lenstronomy LSST g,r,i (2-year coadd)
================  =========  ======  ======  =====================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


class ConfigError(ValueError):
    """A simulation configuration that cannot work (raised before any work is done)."""


@dataclass(frozen=True)
class Band:
    """One band of one instrument: what lenstronomy's ``SingleBand`` needs, in its units.

    ``sky_brightness`` is in mag/arcsec^2, ``magnitude_zero_point`` is the AB magnitude that gives
    1 e-/s, ``exposure_time`` is per exposure (s), ``read_noise`` in e- per exposure,
    ``seeing`` the Gaussian PSF FWHM (arcsec).
    """

    name: str
    pixel_scale: float
    seeing: float
    exposure_time: float
    num_exposures: int
    sky_brightness: float
    magnitude_zero_point: float
    read_noise: float
    ccd_gain: float

    @property
    def total_exposure(self) -> float:
        """Summed exposure time of the coadd (s)."""
        return self.exposure_time * self.num_exposures

    @property
    def sky_cps_per_pixel(self) -> float:
        """Sky level in e-/s per pixel (already subtracted from the images; adds noise only)."""
        return 10 ** (-0.4 * (self.sky_brightness - self.magnitude_zero_point)) * self.pixel_scale**2

    @property
    def background_noise(self) -> float:
        """Gaussian sigma of sky + read noise per pixel in e-/s (lenstronomy's ``bkg_noise``)."""
        t = self.total_exposure
        var_e = self.num_exposures * self.read_noise**2 + t * self.sky_cps_per_pixel
        return float(np.sqrt(var_e) / t)

    def mag_to_cps(self, magnitude):
        """AB magnitude -> total e-/s."""
        return 10 ** (-0.4 * (np.asarray(magnitude) - self.magnitude_zero_point))

    def kwargs_single_band(self) -> dict:
        """Keyword arguments for lenstronomy's ``SingleBand``/``SimAPI`` (counts in e-)."""
        return {
            "pixel_scale": self.pixel_scale,
            "exposure_time": self.exposure_time,
            "num_exposures": self.num_exposures,
            "sky_brightness": self.sky_brightness,
            "magnitude_zero_point": self.magnitude_zero_point,
            "read_noise": self.read_noise,
            "ccd_gain": self.ccd_gain,
            "seeing": self.seeing,
            "psf_type": "GAUSSIAN",
            "data_count_unit": "e-",
        }


@dataclass(frozen=True)
class Preset:
    """An instrument preset: bands (same pixel grid), reference band for magnitudes, image size,
    and how its images vary and fail (per-image PSF, correlated noise, saturation, artefacts;
    used by lens-task scenes)."""

    name: str
    description: str
    bands: tuple[Band, ...]
    reference_band: str
    size: int = 64
    supersampling: int = 2
    psf_library: str | None = None  # pipeline/data/psf/<name>.fits (None: Gaussian of seeing)
    psf_scale: tuple[float, float] = (1.0, 1.0)  # PSF width factor per image, uniform
    psf_ellipticity: float = 0.0  # PSF ellipticity per image, uniform on [0, this]
    noise_corr: tuple[float, float] = (0.0, 0.0)  # weight a of the [a,1,a]^2 noise kernel
    saturation: float | None = None  # e-/s per pixel where the detector saturates (clipped)
    spikes: int = 0  # diffraction spikes of stars (space telescopes' spider vanes)
    cosmic_rays: float = 0.0  # mean cosmic-ray hits left per cutout (Poisson)
    trails: float = 0.0  # mean satellite trails per cutout (Poisson)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def pixel_scale(self) -> float:
        return self.bands[0].pixel_scale

    @property
    def fov(self) -> float:
        """Side of the cutout in arcsec."""
        return self.size * self.pixel_scale

    def with_size(self, size: int | None) -> Preset:
        """The same preset at another cutout size (e.g. 101 for challenge-like sets)."""
        if size is None:
            return self
        if not isinstance(size, (int, np.integer)) or size < 16 or size > 512:
            raise ConfigError(f"image size must be an integer in 16..512 pixels, got {size!r}")
        return dataclasses.replace(self, size=int(size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_lenstronomy(name: str, obs: dict, camera: dict, **override) -> Band:
    """A Band from lenstronomy's ``obs`` and ``camera`` dicts (copied, never mutated)."""
    merged = {**camera, **obs, **override}
    return Band(
        name=name,
        pixel_scale=float(merged["pixel_scale"]),
        seeing=float(merged["seeing"]),
        exposure_time=float(merged["exposure_time"]),
        num_exposures=int(merged["num_exposures"]),
        sky_brightness=float(merged["sky_brightness"]),
        magnitude_zero_point=float(merged["magnitude_zero_point"]),
        read_noise=float(merged["read_noise"]),
        ccd_gain=float(merged["ccd_gain"]),
    )


GROUND_COADD_YEARS = 2


def _build_presets() -> dict[str, Preset]:
    from lenstronomy.SimulationAPI.ObservationConfig import HST as HSTModule
    from lenstronomy.SimulationAPI.ObservationConfig import LSST, Euclid

    # HST: WFC3/IR F160W as in lenstronomy (0.08"/px drizzled, 5400 s). lenstronomy sets the
    # Gaussian FWHM to the pixel size; the real F160W PSF is ~0.15" (Windhorst et al. 2011,
    # quoted in the same file), which we use so arcs are not unrealistically sharp.
    hst_camera = {"read_noise": 4.0, "pixel_scale": 0.08, "ccd_gain": 2.5}
    hst = _from_lenstronomy("F160W", dict(HSTModule.WFC3_F160W_band_obs), hst_camera, seeing=0.15)

    # Euclid VIS wide survey: 4 x 566 s, 0.101"/px, FWHM 0.16" (lenstronomy, 2024 numbers).
    vis = _from_lenstronomy("VIS", dict(Euclid.VIS_band_obs), dict(Euclid.VIS_camera))

    # Ground: LSST g, r, i at 0.2"/px, seeing 0.77/0.73/0.71" (lenstronomy), as a 2-year coadd
    # (lenstronomy's coadd_years=2: num_exposures scaled by 2/10; r: 92 x 15 s = 1380 s), which is
    # KiDS-like in depth (KiDS r: 1800 s on VST) and leaves faint arcs faint.
    lsst_camera = {"read_noise": 10.0, "pixel_scale": 0.2, "ccd_gain": 2.3}
    gri = []
    for b in "gri":
        obs = dict(getattr(LSST, f"{b}_band_obs"))
        obs["num_exposures"] = GROUND_COADD_YEARS * obs["num_exposures"] // 10
        gri.append(_from_lenstronomy(b, obs, lsst_camera))
    gri = tuple(gri)

    # Observing conditions per image. PSFs: real Euclid VIS (Q1) and KiDS g,r,i kernels where we
    # have them (pipeline/data/psf), HST a Gaussian. Correlated noise: the neighbour correlation
    # of the real fixtures' sky is 0.23-0.33 (Euclid VIS), 0.45 (HST ACS drizzled), 0.15-0.6
    # (KiDS, HSC); a in [a,1,a]^2 gives rho_1 = 2a / (1 + 2a^2). Saturation: a full well over one
    # exposure (VIS 200 ke- / 566 s; LSST 100 ke- / 15 s; WFC3/IR ~80 ke- over a ramp of ~800 s).
    # Cosmic rays survive stacking only as residuals; ground coadds reject them.
    presets = [
        Preset("hst", "HST WFC3/IR F160W, 0.08\"/px, 2 orbits", (hst,), "F160W",
               psf_scale=(0.85, 1.2), psf_ellipticity=0.05, noise_corr=(0.15, 0.35),
               saturation=100.0, spikes=4, cosmic_rays=0.3),
        Preset("euclid-vis", "Euclid VIS wide survey, 0.101\"/px, 4 x 566 s", (vis,), "VIS",
               psf_library="euclid-vis", psf_scale=(0.9, 1.25), psf_ellipticity=0.06,
               noise_corr=(0.05, 0.25), saturation=350.0, spikes=6, cosmic_rays=0.3),
        Preset("ground-gri", "LSST/KiDS-like g,r,i (LSST 2-year coadd), 0.2\"/px", gri, "r",
               psf_library="ground-gri", psf_scale=(0.8, 1.3), psf_ellipticity=0.08,
               noise_corr=(0.0, 0.35), saturation=6700.0, trails=0.03),
    ]
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build_presets()


def get_preset(name: str, size: int | None = None) -> Preset:
    """The preset called ``name`` (see ``PRESETS``), optionally at another cutout size."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r} (available: {', '.join(sorted(PRESETS))})"
        ) from None
    return preset.with_size(size)
