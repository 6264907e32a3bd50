"""What galaxies and stars look like: light components drawn from the priors (pure functions).

Every function returns :class:`Light` components (lenstronomy profile name, geometry kwargs, a
magnitude per band) and a dict of what it drew; renderers turn them into pixels. The lens task's
galaxy field (:func:`main_galaxy`, :func:`neighbours`, :func:`faint_galaxies`, :func:`stars`)
is drawn from one broad prior for lenses and non-lenses alike, so a galaxy's size, brightness,
profile and surroundings carry no label information; the hard-negative features
(:func:`star_forming_ring`, :func:`close_companions`, a blue :func:`star_forming` galaxy next
to the main one, strong spiral arms) are what looks like lensing without being it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.simulate.instruments import Preset
from pipeline.simulate.priors import COLOUR_SCATTER, COLOURS, Priors


@dataclass
class Light:
    """One light profile: lenstronomy name, geometry kwargs (no ``amp``), magnitude per band."""

    profile: str
    kwargs: dict
    mags: dict[str, float]


# ----------------------------------------------------------------------------- helpers
def u(rng: np.random.Generator, r) -> float:
    """Uniform draw on the range ``r = (lo, hi)``."""
    return float(rng.uniform(r[0], r[1]))


def log_u(rng: np.random.Generator, r) -> float:
    """Log-uniform draw on ``r = (lo, hi)`` (both > 0)."""
    return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))


def ellipticity(phi: float, q: float) -> tuple[float, float]:
    """lenstronomy's (e1, e2) from position angle phi (rad) and axis ratio q."""
    e = (1 - q) / (1 + q)
    return e * math.cos(2 * phi), e * math.sin(2 * phi)


def mags(rng, preset: Preset, mag_ref: float, sed: str) -> dict[str, float]:
    """Magnitude per band from the reference-band magnitude and the SED's colours."""
    if len(preset.bands) == 1:
        return {preset.reference_band: mag_ref}
    col = COLOURS[sed]
    ref = col.get(preset.reference_band, 0.0)
    out = {}
    for b in preset.band_names:
        scatter = 0.0 if b == preset.reference_band else rng.normal(0, COLOUR_SCATTER)
        out[b] = mag_ref + col.get(b, 0.0) - ref + scatter
    return out


def split_mag(mag: float, fractions) -> list[float]:
    """Magnitudes of parts whose fluxes are in ratio ``fractions`` and sum to ``mag``."""
    f = np.asarray(fractions, dtype=float)
    return [mag - 2.5 * math.log10(x / f.sum()) for x in f]


def sersic(preset, rng, mag, sed, centre, r_eff, n, q, phi) -> Light:
    e1, e2 = ellipticity(phi, q)
    return Light("SERSIC_ELLIPSE", {"R_sersic": r_eff, "n_sersic": n, "e1": e1, "e2": e2,
                                    "center_x": centre[0], "center_y": centre[1]},
                 mags(rng, preset, mag, sed))


def clumpy_curve(rng, preset, x, y, mag: float, sigma: float, sed: str) -> list[Light]:
    """Gaussian clumps at (x, y) with lognormal flux scatter, total magnitude ``mag``."""
    fr = rng.lognormal(0.0, 0.4, len(x))
    return [Light("GAUSSIAN", {"sigma": sigma, "center_x": float(a), "center_y": float(b)},
                  mags(rng, preset, m, sed))
            for a, b, m in zip(x, y, split_mag(mag, fr), strict=True)]


def project(x, y, q: float, phi: float, centre):
    """Incline a face-on pattern (axis ratio q) and rotate it by phi about ``centre``."""
    y = y * q
    c, s = math.cos(phi), math.sin(phi)
    return centre[0] + c * x - s * y, centre[1] + s * x + c * y


def _around(rng, centre, sep) -> tuple[float, float]:
    a = rng.uniform(0, 2 * math.pi)
    return centre[0] + sep * math.cos(a), centre[1] + sep * math.sin(a)


# ----------------------------------------------------------------------------- substructure task
def deflector_light(rng, preset: Preset, priors: Priors, centre) -> tuple[Light, dict]:
    """The substructure task's deflector: an early-type Sersic galaxy (narrow priors)."""
    q = u(rng, priors.q_lens)
    phi = float(rng.uniform(0, math.pi))
    mag = u(rng, priors.mag_lens)
    r_eff = u(rng, priors.r_eff_lens)
    light = sersic(preset, rng, mag, "red", centre, r_eff, u(rng, priors.n_lens), q, phi)
    return light, {"q": q, "phi": phi, "mag_lens": mag, "r_eff_lens": r_eff}


def star_forming(rng, preset: Preset, priors: Priors, mag: float, centre,
                 max_clumps: int) -> tuple[list[Light], dict]:
    """A blue Sersic galaxy with 0..max_clumps Gaussian clumps (a lensed source, or an unlensed
    one beside the deflector); total magnitude ``mag``."""
    q = u(rng, priors.q_source)
    phi = float(rng.uniform(0, math.pi))
    r_eff = u(rng, priors.r_eff_source)
    n_clumps = int(rng.integers(0, max_clumps + 1))
    fr = [1.0] + [u(rng, priors.clump_flux) for _ in range(n_clumps)]
    ms = split_mag(mag, fr)
    parts = [sersic(preset, rng, ms[0], "blue", centre, r_eff, u(rng, priors.n_source), q, phi)]
    for m in ms[1:]:
        r = r_eff * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        parts.append(Light("GAUSSIAN", {"sigma": u(rng, priors.clump_sigma),
                     "center_x": centre[0] + r * math.cos(a), "center_y": centre[1] + r * math.sin(a)},
                     mags(rng, preset, m, "blue")))
    return parts, {"r_eff_source": r_eff, "n_clumps": n_clumps}


# ----------------------------------------------------------------------------- lens-task field
def spiral_arms(rng, preset, priors: Priors, centre, r_disk, q, phi, mag) -> list[Light]:
    """2-4 clumpy logarithmic arms (20 blue clumps each, winding 0.6-1 turn) from 0.2 out to
    1.8 disk radii, total ``mag``."""
    pitch = math.radians(u(rng, priors.spiral_pitch_deg))
    n_arms = int(rng.integers(2, 5))
    t = np.linspace(0.0, u(rng, (1.2, 2.0)) * math.pi, 20)
    r = np.exp(t * math.tan(pitch))
    r = 0.2 * r_disk + r * (1.6 * r_disk / r.max())
    t0 = rng.uniform(0, 2 * math.pi)  # where the arms start, in the disk plane
    ang = np.concatenate([t + t0 + 2 * math.pi * k / n_arms for k in range(n_arms)])
    rr = np.tile(r, n_arms)
    x, y = project(rr * np.cos(ang), rr * np.sin(ang), q, phi, centre)
    # clumps about as wide as their spacing along the arm, so arms look continuous but knotty
    width = 0.6 * np.hypot(np.diff(r * np.cos(t)), np.diff(r * np.sin(t))).mean() + 0.02
    return clumpy_curve(rng, preset, x, y, mag, width, "blue")


def disk_clumps(rng, preset, centre, r_disk, q, phi, mag) -> list[Light]:
    """5-30 star-forming knots scattered over the disk (flocculent structure), total ``mag``."""
    n = int(rng.integers(5, 31))
    r = r_disk * 1.5 * np.sqrt(rng.random(n))
    a = rng.uniform(0, 2 * math.pi, n)
    x, y = project(r * np.cos(a), r * np.sin(a), q, phi, centre)
    return clumpy_curve(rng, preset, x, y, mag, u(rng, (0.03, 0.1)) + 0.05 * r_disk, "blue")


def main_galaxy(rng, preset: Preset, priors: Priors, centre,
                strong_arms: bool = False) -> tuple[list[Light], dict, dict | None]:
    """The galaxy at the centre of a lens-task cutout (the deflector of a lens, the main galaxy
    of a non-lens): one Sersic of any index, or a bulge + disk with its own axis ratio and
    twisted position angle, and for disks by chance a bar, clumpy spiral arms, star-forming
    knots, a resonance ring and a dust lane.
    ``strong_arms`` makes a disk with bright arms (the spiral hard negative).

    Returns the light components, what was drawn (``q``, ``phi``: the light's overall shape, which
    a lens's mass follows; ``mag_lens``, ``r_eff_lens``, ``galaxy_type``) and the dust lane (or
    None) for :func:`pipeline.simulate.optics.dust_transmission`.
    """
    mag = u(rng, priors.mag_galaxy)
    r_eff = log_u(rng, priors.r_eff_galaxy)
    phi = float(rng.uniform(0, math.pi))
    if not strong_arms and rng.random() >= priors.disk_fraction:
        q = u(rng, priors.q_galaxy)
        n = u(rng, priors.n_galaxy)
        sed = "red" if n > 2.5 else "disk"
        info = {"q": q, "phi": phi, "mag_lens": mag, "r_eff_lens": r_eff, "galaxy_type": "sersic"}
        return [sersic(preset, rng, mag, sed, centre, r_eff, n, q, phi)], info, None
    q = u(rng, priors.q_disk)
    bt = u(rng, priors.bulge_fraction)
    has_bar = rng.random() < priors.bar_fraction
    has_arms = strong_arms or rng.random() < priors.arms_fraction
    has_knots = rng.random() < priors.knots_fraction
    has_ring = rng.random() < priors.inner_ring_fraction
    f_bar = u(rng, priors.bar_flux) if has_bar else 0.0
    f_arms = u(rng, priors.strong_arms_flux if strong_arms else priors.arms_flux) if has_arms else 0.0
    f_knots = u(rng, priors.knots_flux) if has_knots else 0.0
    f_ring = u(rng, priors.inner_ring_flux) if has_ring else 0.0
    f_disk = max(1.0 - bt - f_bar - f_arms - f_knots - f_ring, 0.05)
    m_bulge, m_disk, m_bar, m_arms, m_knots, m_ring = split_mag(
        mag, [bt, f_disk, *(max(f, 1e-9) for f in (f_bar, f_arms, f_knots, f_ring))])
    q_bulge = float(np.clip(q + u(rng, (0.2, 0.6)), 0.4, 1.0))  # bulges are rounder than disks
    phi_bulge = phi + math.radians(rng.normal(0, priors.twist_deg))
    parts = [sersic(preset, rng, m_bulge, "red", centre, r_eff * u(rng, priors.bulge_size),
                    u(rng, priors.n_bulge), q_bulge, phi_bulge),
             sersic(preset, rng, m_disk, "disk", centre, r_eff, u(rng, priors.n_disk), q, phi)]
    kind = ["disk"]
    if has_bar:
        parts.append(sersic(preset, rng, m_bar, "red", centre, r_eff * u(rng, priors.bar_length),
                            0.5, u(rng, priors.bar_q), float(rng.uniform(0, math.pi))))
        kind.append("bar")
    if has_arms:
        parts += spiral_arms(rng, preset, priors, centre, r_eff, q, phi, m_arms)
        kind.append("arms")
    if has_knots:
        parts += disk_clumps(rng, preset, centre, r_eff, q, phi, m_knots)
        kind.append("knots")
    if has_ring:  # a resonance ring in the disk plane (inner/outer rings of barred spirals)
        radius = r_eff * u(rng, (0.5, 1.5))
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        x, y = project(radius * np.cos(t), radius * np.sin(t), q, phi, centre)
        parts += clumpy_curve(rng, preset, x, y, m_ring, 0.12 * radius + 0.02, "disk")
        kind.append("ring")
    dust = None
    if q < 0.6 and rng.random() < priors.dust_fraction:  # lanes show in inclined disks
        dust = {"x": centre[0], "y": centre[1], "phi": phi, "tau": u(rng, priors.dust_tau),
                "width": u(rng, (0.05, 0.15)) * r_eff + 0.5 * preset.pixel_scale,
                "offset": rng.normal(0, 0.1) * r_eff * q, "length": 1.5 * r_eff}
        kind.append("dust")
    info = {"q": q, "phi": phi, "mag_lens": mag, "r_eff_lens": r_eff,
            "galaxy_type": "+".join(kind)}
    return parts, info, dust


def neighbours(rng, preset: Preset, priors: Priors, centre, mag_main: float,
               sep=None) -> list[Light]:
    """1..max_neighbours galaxies of any colour around the main one (with probability
    ``neighbour_fraction``; always when ``sep`` is given, at that separation range)."""
    if sep is None and rng.random() >= priors.neighbour_fraction:
        return []
    out = []
    for _ in range(int(rng.integers(1, (priors.max_neighbours if sep is None else 2) + 1))):
        c = _around(rng, centre, u(rng, sep or priors.neighbour_sep))
        m = mag_main + u(rng, priors.neighbour_dmag)
        sed = ("red", "disk", "blue")[int(rng.integers(0, 3))]
        out.append(sersic(preset, rng, m, sed, c, log_u(rng, priors.neighbour_r_eff),
                          u(rng, (0.5, 4.0)), u(rng, (0.3, 1.0)), float(rng.uniform(0, math.pi))))
    return out


def faint_galaxies(rng, preset: Preset, priors: Priors) -> list[Light]:
    """The faint field: a Poisson number of small galaxies anywhere in the cutout."""
    half = preset.fov / 2
    out = []
    for _ in range(int(rng.poisson(priors.faint_galaxies))):
        c = (u(rng, (-half, half)), u(rng, (-half, half)))
        sed = ("red", "disk", "blue")[int(rng.integers(0, 3))]
        out.append(sersic(preset, rng, u(rng, priors.mag_faint), sed, c,
                          log_u(rng, (0.05, 0.4)), u(rng, (0.5, 3.0)), u(rng, (0.3, 1.0)),
                          float(rng.uniform(0, math.pi))))
    return out


def stars(rng, preset: Preset, priors: Priors) -> list[dict]:
    """Foreground stars (with probability ``star_fraction``, 1-2 of them) anywhere in the
    cutout: position, magnitude per band and the angle of their diffraction spikes."""
    if rng.random() >= priors.star_fraction:
        return []
    half = preset.fov / 2
    spikes = float(rng.uniform(0, 2 * math.pi))  # the cutout's angle to the telescope's vanes
    sed = ("red", "disk", "blue")[int(rng.integers(0, 3))]
    return [{"x": u(rng, (-half, half)), "y": u(rng, (-half, half)),
             "mags": mags(rng, preset, u(rng, priors.mag_star), sed), "spike_angle": spikes}
            for _ in range(int(rng.integers(1, 3)))]


def star_forming_ring(rng, preset, priors: Priors, centre, mag_main: float) -> list[Light]:
    """A clumpy blue star-forming ring around the main galaxy (Einstein-ring-like), inclined."""
    radius = u(rng, priors.ring_radius)
    q = u(rng, (0.5, 1.0))
    phi = float(rng.uniform(0, math.pi))
    f = u(rng, priors.ring_flux_fraction)
    mag = mag_main - 2.5 * math.log10(f / (1 - f))
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False) + rng.uniform(0, 2 * np.pi)
    x, y = project(radius * np.cos(t), radius * np.sin(t), q, phi, centre)
    return clumpy_curve(rng, preset, x, y, mag, 0.18 * radius, "blue")
