"""Dark-matter substructure: pure functions that draw subhalo and vortex populations.

Both populations are sets of point masses (positions in arcsec, Einstein radii in arcsec), as in
DeepLense: CDM subhalos from a power-law mass function, and the axion "vortex" as point masses
spread evenly along a line whose length is the axion de Broglie wavelength.
"""

from __future__ import annotations

import functools

import numpy as np

HC_EV_M = 1.239841984e-6  # h c (eV m)
C_KM_S = 299792.458
KPC_M = 3.0856775814913673e19


@functools.cache
def cosmology():
    """The simulator's cosmology: flat LCDM, H0 = 70, Om0 = 0.3 (built once: it costs ~0.2 s)."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=70.0, Om0=0.3)


def lens_cosmo(z_lens: float, z_source: float):
    """lenstronomy ``LensCosmo`` (distances, Sigma_crit) for a lens/source pair."""
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(z_lens, z_source, cosmo=cosmology())


def point_mass_theta_e(mass, sigma_crit_angle: float):
    """Einstein radius (") of point masses (M_sun): M = pi Sigma_crit theta_E^2."""
    return np.sqrt(np.asarray(mass, dtype=float) / (np.pi * sigma_crit_angle))


def expected_subhalos(sigma_sub: float, m_low: float, m_high: float, alpha: float,
                      area_kpc2: float, m0: float = 1e8) -> float:
    """Mean subhalo number for dN/(dm dA) = sigma_sub/m0 (m/m0)^alpha over an area (kpc^2).

    This is pyHalo's CDM normalisation (``sigma_sub`` in kpc^-2 at the pivot m0 = 1e8 M_sun).
    """
    a1 = alpha + 1
    integral = ((m_high / m0) ** a1 - (m_low / m0) ** a1) / a1
    return sigma_sub * integral * area_kpc2


def sample_power_law(rng: np.random.Generator, n: int, m_low: float, m_high: float,
                     alpha: float) -> np.ndarray:
    """``n`` masses from dN/dm ~ m^alpha on [m_low, m_high] by inverse-CDF (alpha != -1)."""
    a1 = alpha + 1
    u = rng.random(n)
    return (m_low**a1 + u * (m_high**a1 - m_low**a1)) ** (1 / a1)


def cdm_population(rng: np.random.Generator, sigma_sub: float, m_range: tuple[float, float],
                   alpha: float, radius: float, kpc_per_arcsec: float,
                   centre: tuple[float, float] = (0.0, 0.0)):
    """CDM subhalos uniform in a disk of ``radius`` ("): (x, y, mass) arrays.

    The count is Poisson with the mean of :func:`expected_subhalos` over the disk's area.
    """
    area = np.pi * (radius * kpc_per_arcsec) ** 2
    n = rng.poisson(expected_subhalos(sigma_sub, *m_range, alpha, area))
    r = radius * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    masses = sample_power_law(rng, n, *m_range, alpha)
    return centre[0] + r * np.cos(phi), centre[1] + r * np.sin(phi), masses


def de_broglie_kpc(log10_m_axion: float, sigma_v_km_s: float) -> float:
    """de Broglie wavelength lambda = h / (m v) = h c / (m c^2 v/c), in kpc (m in eV/c^2)."""
    lam_m = HC_EV_M / (10.0**log10_m_axion * sigma_v_km_s / C_KM_S)
    return lam_m / KPC_M


def vortex_line(length: float, n_points: int, centre: tuple[float, float], angle: float):
    """(x, y) of ``n_points`` evenly spaced along a line of ``length`` (") through ``centre``."""
    s = np.linspace(-length / 2, length / 2, n_points)
    return centre[0] + s * np.cos(angle), centre[1] + s * np.sin(angle)
