"""Scenes: backend-independent descriptions of one cutout, drawn from the priors.

A :class:`Scene` is plain data in lenstronomy's naming (profile names + keyword dicts), so the
lenstronomy and caustics backends render the same thing and a scene can be logged. Light
components carry a magnitude per band instead of an amplitude; renderers convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.simulate import substructure as sub
from pipeline.simulate.instruments import Preset
from pipeline.simulate.priors import (
    COLOUR_SCATTER,
    COLOURS,
    LENS_KIND,
    SUBSTRUCTURE_CLASSES,
    Priors,
)

# Label columns of each task, with the value used when a label does not apply to a row.
NAN = float("nan")
LENS_LABELS: dict[str, object] = {
    "is_lens": 0, "kind": "", "theta_e": 0.0, "mag_source": NAN, "mag_lens": NAN,
    "snr_arcs": 0.0, "z_lens": NAN, "z_source": NAN, "gamma_slope": NAN, "e1_lens": NAN,
    "e2_lens": NAN, "gamma1": NAN, "gamma2": NAN, "x_lens": 0.0, "y_lens": 0.0,
    "x_source": NAN, "y_source": NAN, "r_eff_source": NAN, "r_eff_lens": NAN, "n_clumps": 0,
}
SUBSTRUCTURE_LABELS: dict[str, object] = {
    **LENS_LABELS,
    "substructure": 0, "substructure_class": "", "log10_m_axion": NAN, "sigma_sub": 0.0,
    "n_subhalos": 0, "log10_m_vortex": NAN, "vortex_length": 0.0,
}
TASK_LABELS = {"lens": LENS_LABELS, "substructure": SUBSTRUCTURE_LABELS}


@dataclass
class Light:
    """One light profile: lenstronomy name, geometry kwargs (no ``amp``), magnitude per band."""

    profile: str
    kwargs: dict
    mags: dict[str, float]


@dataclass
class Scene:
    """Everything needed to render one cutout (noise is added by the caller from its own RNG).

    ``lens``: mass profiles [(name, kwargs)], empty for non-lenses. ``source``: lensed light.
    ``light``: unlensed light (deflector, neighbours, non-lens galaxies). ``point_masses``:
    substructure as arrays ``x``, ``y``, ``theta_e`` ("), rendered in the lens plane.
    """

    kind: str
    lens: list[tuple[str, dict]] = field(default_factory=list)
    source: list[Light] = field(default_factory=list)
    light: list[Light] = field(default_factory=list)
    point_masses: dict[str, np.ndarray] | None = None
    labels: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def _u(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1]))


def _ellipticity(phi: float, q: float) -> tuple[float, float]:
    """lenstronomy's (e1, e2) from position angle phi (rad) and axis ratio q."""
    e = (1 - q) / (1 + q)
    return e * math.cos(2 * phi), e * math.sin(2 * phi)


def _mags(rng, preset: Preset, mag_ref: float, sed: str) -> dict[str, float]:
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


def _split_mag(mag: float, fractions) -> list[float]:
    """Magnitudes of parts whose fluxes are in ratio ``fractions`` and sum to ``mag``."""
    f = np.asarray(fractions, dtype=float)
    return [mag - 2.5 * math.log10(x / f.sum()) for x in f]


def allocate(n: int, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Exactly-apportioned class labels for ``n`` rows (largest remainder), in random order."""
    names = list(fractions)
    exact = np.array([fractions[k] * n for k in names])
    counts = np.floor(exact).astype(int)
    perm = rng.permutation(len(names))  # ties in the remainder go to random classes
    order = perm[np.argsort(-(exact - counts)[perm], kind="stable")]
    counts[order[: n - counts.sum()]] += 1
    labels = np.repeat(np.array(names, dtype=object), counts)
    rng.shuffle(labels)
    return [str(x) for x in labels]


# ----------------------------------------------------------------------------- galaxies
def _deflector_light(rng, preset: Preset, priors: Priors, centre) -> tuple[Light, dict]:
    """The early-type galaxy that is the deflector of a lens or the main galaxy of a non-lens."""
    q = _u(rng, priors.q_lens)
    phi = float(rng.uniform(0, math.pi))
    mag = _u(rng, priors.mag_lens)
    r_eff = _u(rng, priors.r_eff_lens)
    e1, e2 = _ellipticity(phi, q)
    kw = {"R_sersic": r_eff, "n_sersic": _u(rng, priors.n_lens), "e1": e1, "e2": e2,
          "center_x": centre[0], "center_y": centre[1]}
    info = {"q": q, "phi": phi, "mag_lens": mag, "r_eff_lens": r_eff}
    return Light("SERSIC_ELLIPSE", kw, _mags(rng, preset, mag, "red")), info


def _star_forming(rng, preset: Preset, priors: Priors, mag: float, centre,
                  max_clumps: int) -> tuple[list[Light], dict]:
    """A blue Sersic galaxy with 0..max_clumps Gaussian clumps; total magnitude ``mag``."""
    q = _u(rng, priors.q_source)
    phi = float(rng.uniform(0, math.pi))
    r_eff = _u(rng, priors.r_eff_source)
    n_clumps = int(rng.integers(0, max_clumps + 1))
    fr = [1.0] + [_u(rng, priors.clump_flux) for _ in range(n_clumps)]
    mags = _split_mag(mag, fr)
    e1, e2 = _ellipticity(phi, q)
    parts = [Light("SERSIC_ELLIPSE", {"R_sersic": r_eff, "n_sersic": _u(rng, priors.n_source),
                   "e1": e1, "e2": e2, "center_x": centre[0], "center_y": centre[1]},
                   _mags(rng, preset, mags[0], "blue"))]
    for m in mags[1:]:
        r = r_eff * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        parts.append(Light("GAUSSIAN", {"sigma": _u(rng, priors.clump_sigma),
                     "center_x": centre[0] + r * math.cos(a), "center_y": centre[1] + r * math.sin(a)},
                     _mags(rng, preset, m, "blue")))
    return parts, {"r_eff_source": r_eff, "n_clumps": n_clumps}


def _clumpy_curve(rng, preset, x, y, mag: float, sigma: float, sed: str) -> list[Light]:
    """Gaussian clumps at (x, y) with lognormal flux scatter, total magnitude ``mag``."""
    fr = rng.lognormal(0.0, 0.4, len(x))
    return [Light("GAUSSIAN", {"sigma": sigma, "center_x": float(a), "center_y": float(b)},
                  _mags(rng, preset, m, sed))
            for a, b, m in zip(x, y, _split_mag(mag, fr), strict=True)]


def _project(x, y, q: float, phi: float, centre):
    """Incline a face-on pattern (axis ratio q) and rotate it by phi about ``centre``."""
    y = y * q
    c, s = math.cos(phi), math.sin(phi)
    return centre[0] + c * x - s * y, centre[1] + s * x + c * y


def _spiral(rng, preset, priors: Priors, centre) -> tuple[list[Light], dict]:
    """Bulge + exponential disk + two clumpy logarithmic arms (40 clumps)."""
    mag = _u(rng, priors.mag_lens)
    f_arm = _u(rng, priors.spiral_arm_flux_fraction)
    m_bulge, m_disk, m_arms = _split_mag(mag, [0.3 * (1 - f_arm), 0.7 * (1 - f_arm), f_arm])
    q = _u(rng, (0.4, 1.0))
    phi = float(rng.uniform(0, math.pi))
    r_disk = _u(rng, priors.r_eff_lens)
    e1, e2 = _ellipticity(phi, q)
    parts = [
        Light("SERSIC_ELLIPSE", {"R_sersic": 0.25 * r_disk, "n_sersic": 2.5, "e1": e1, "e2": e2,
              "center_x": centre[0], "center_y": centre[1]}, _mags(rng, preset, m_bulge, "red")),
        Light("SERSIC_ELLIPSE", {"R_sersic": r_disk, "n_sersic": 1.0, "e1": e1, "e2": e2,
              "center_x": centre[0], "center_y": centre[1]}, _mags(rng, preset, m_disk, "disk")),
    ]
    pitch = math.radians(_u(rng, priors.spiral_pitch_deg))
    t = np.linspace(0.0, 1.6 * math.pi, 20)
    r = np.exp(t * math.tan(pitch))
    r = r * (1.8 * r_disk / r.max())
    x0 = np.concatenate([r * np.cos(t), -r * np.cos(t)])
    y0 = np.concatenate([r * np.sin(t), -r * np.sin(t)])
    x, y = _project(x0, y0, q, phi, centre)
    # clumps about as wide as their spacing along the arm, so arms look continuous but knotty
    width = 0.6 * np.hypot(np.diff(x0[:20]), np.diff(y0[:20])).mean() + 0.02
    parts += _clumpy_curve(rng, preset, x, y, m_arms, width, "blue")
    return parts, {"mag_lens": mag, "r_eff_lens": r_disk}


def _ring_galaxy(rng, preset, priors: Priors, centre) -> tuple[list[Light], dict]:
    """Nucleus + clumpy star-forming ring (collisional-ring-like), inclined."""
    mag = _u(rng, priors.mag_lens)
    f_ring = _u(rng, priors.ring_flux_fraction)
    m_core, m_ring = _split_mag(mag, [1 - f_ring, f_ring])
    radius = _u(rng, priors.ring_radius)
    q = _u(rng, (0.5, 1.0))
    phi = float(rng.uniform(0, math.pi))
    e1, e2 = _ellipticity(phi, q)
    core = Light("SERSIC_ELLIPSE", {"R_sersic": _u(rng, (0.2, 0.6)), "n_sersic": _u(rng, priors.n_lens),
                 "e1": e1, "e2": e2, "center_x": centre[0], "center_y": centre[1]},
                 _mags(rng, preset, m_core, "red"))
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False) + rng.uniform(0, 2 * np.pi)
    x, y = _project(radius * np.cos(t), radius * np.sin(t), q, phi, centre)
    ring = _clumpy_curve(rng, preset, x, y, m_ring, 0.18 * radius, "blue")
    return [core, *ring], {"mag_lens": mag, "r_eff_lens": core.kwargs["R_sersic"]}


# ----------------------------------------------------------------------------- scenes
def _centre(rng, preset: Preset, priors: Priors) -> tuple[float, float]:
    d = priors.centre_offset * preset.pixel_scale
    return float(rng.uniform(-d, d)), float(rng.uniform(-d, d))


def _redshifts(rng, priors: Priors) -> tuple[float, float]:
    z_l = _u(rng, priors.z_lens)
    z_s = _u(rng, (max(priors.z_source[0], z_l + priors.dz_min), priors.z_source[1]))
    return z_l, z_s


def _lens_scene(rng, preset: Preset, priors: Priors, task: str) -> Scene:
    """EPL + shear deflector with Sersic light, lensing a clumpy Sersic source."""
    centre = _centre(rng, preset, priors)
    light, info = _deflector_light(rng, preset, priors, centre)
    theta_e = _u(rng, priors.theta_e if task == "lens" else priors.theta_e_substructure)
    q_m = float(np.clip(info["q"] + rng.normal(0, priors.q_mass_scatter), 0.4, 1.0))
    phi_m = info["phi"] + math.radians(rng.normal(0, priors.phi_mass_scatter_deg))
    e1, e2 = _ellipticity(phi_m, q_m)
    slope = _u(rng, priors.gamma_slope)
    g = _u(rng, priors.shear)
    phi_g = rng.uniform(0, math.pi)
    g1, g2 = g * math.cos(2 * phi_g), g * math.sin(2 * phi_g)
    lens = [("EPL_NUMBA", {"theta_E": theta_e, "gamma": slope, "e1": e1, "e2": e2,
                           "center_x": centre[0], "center_y": centre[1]}),
            ("SHEAR", {"gamma1": g1, "gamma2": g2, "ra_0": centre[0], "dec_0": centre[1]})]
    beta_max = priors.beta_max if task == "lens" else priors.beta_max_substructure
    beta = beta_max * theta_e * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    src_c = (centre[0] + beta * math.cos(a), centre[1] + beta * math.sin(a))
    mag_s = _u(rng, priors.mag_source if task == "lens" else priors.mag_source_substructure)
    clumps = priors.max_clumps if task == "lens" else priors.max_clumps_substructure
    source, sinfo = _star_forming(rng, preset, priors, mag_s, src_c, clumps)
    z_l, z_s = _redshifts(rng, priors)
    labels = {"is_lens": 1, "kind": LENS_KIND, "theta_e": theta_e, "mag_source": mag_s,
              "mag_lens": info["mag_lens"], "z_lens": z_l, "z_source": z_s, "gamma_slope": slope,
              "e1_lens": e1, "e2_lens": e2, "gamma1": g1, "gamma2": g2, "x_lens": centre[0],
              "y_lens": centre[1], "x_source": src_c[0], "y_source": src_c[1],
              "r_eff_lens": info["r_eff_lens"], **sinfo}
    return Scene(LENS_KIND, lens=lens, source=source, light=[light], labels=labels)


def _nonlens_scene(rng, preset: Preset, priors: Priors, kind: str) -> Scene:
    centre = _centre(rng, preset, priors)
    z_l = _u(rng, priors.z_lens)
    labels = {"is_lens": 0, "kind": kind, "z_lens": z_l, "x_lens": centre[0], "y_lens": centre[1]}
    if kind == "spiral":
        light, info = _spiral(rng, preset, priors, centre)
    elif kind == "ring_galaxy":
        light, info = _ring_galaxy(rng, preset, priors, centre)
    else:
        main, info = _deflector_light(rng, preset, priors, centre)
        light = [main]
        if kind == "companion":
            for _ in range(int(rng.integers(1, 3))):
                sep, a = _u(rng, priors.companion_sep), rng.uniform(0, 2 * math.pi)
                c = (centre[0] + sep * math.cos(a), centre[1] + sep * math.sin(a))
                comp, _ = _deflector_light(rng, preset, priors, c)
                m = info["mag_lens"] + _u(rng, priors.companion_dmag)
                comp.kwargs["R_sersic"] *= 0.6  # neighbours are smaller than the main galaxy
                sed = "red" if rng.random() < 0.5 else "blue"
                comp.mags = _mags(rng, preset, m, sed)
                light.append(comp)
        elif kind == "background_blend":
            sep, a = _u(rng, priors.blend_sep), rng.uniform(0, 2 * math.pi)
            c = (centre[0] + sep * math.cos(a), centre[1] + sep * math.sin(a))
            mag_s = _u(rng, priors.mag_source)
            parts, sinfo = _star_forming(rng, preset, priors, mag_s, c, priors.max_clumps)
            light += parts
            z_s = _u(rng, (max(priors.z_source[0], z_l + priors.dz_min), priors.z_source[1]))
            labels.update({"mag_source": mag_s, "z_source": z_s, "x_source": c[0],
                           "y_source": c[1], **sinfo})
        elif kind != "elliptical":
            raise ValueError(f"unknown non-lens kind {kind!r}")
    labels.update({"mag_lens": info["mag_lens"], "r_eff_lens": info["r_eff_lens"]})
    return Scene(kind, light=light, labels=labels)


def _add_substructure(rng, scene: Scene, priors: Priors, cls: str) -> Scene:
    """Add CDM subhalos or a vortex (point masses) to a lens scene; fill the DM labels."""
    lab = scene.labels
    lc = sub.lens_cosmo(lab["z_lens"], lab["z_source"])
    kpc_per_arcsec = lc.dd * 1e3 / 206264.806
    centre = (lab["x_lens"], lab["y_lens"])
    lab.update({"substructure": SUBSTRUCTURE_CLASSES.index(cls), "substructure_class": cls,
                "log10_m_axion": _u(rng, priors.log10_m_axion), "sigma_sub": 0.0})
    if cls == "cdm":
        sigma_sub = _u(rng, priors.sigma_sub)
        x, y, m = sub.cdm_population(rng, sigma_sub, priors.m_sub, priors.alpha_sub,
                                     priors.sub_radius * lab["theta_e"], kpc_per_arcsec, centre)
        lab.update({"sigma_sub": sigma_sub, "n_subhalos": len(m)})
        # Negative sheet with the subhalos' mean convergence inside the disk (as pyHalo does),
        # so the population perturbs the arcs locally instead of inflating the Einstein radius.
        radius = priors.sub_radius * lab["theta_e"]
        kappa = m.sum() / (lc.sigma_crit_angle * np.pi * radius**2)
        scene.lens.append(("CONVERGENCE", {"kappa": -float(kappa), "ra_0": centre[0],
                                           "dec_0": centre[1]}))
    elif cls == "vortex":
        sigma_v = lc.sis_theta_E2sigma_v(lab["theta_e"])
        length = min(sub.de_broglie_kpc(lab["log10_m_axion"], sigma_v) / kpc_per_arcsec,
                     priors.max_vortex_length)
        r = lab["theta_e"] * math.sqrt(rng.random())  # the line passes near the arcs
        a = rng.uniform(0, 2 * math.pi)
        x, y = sub.vortex_line(length, priors.vortex_points,
                               (centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)),
                               rng.uniform(0, math.pi))
        log_m = _u(rng, priors.log10_m_vortex)
        m = np.full(priors.vortex_points, 10**log_m / priors.vortex_points)
        lab.update({"log10_m_vortex": log_m, "vortex_length": length})
    else:
        return scene
    scene.point_masses = {"x": np.asarray(x, float), "y": np.asarray(y, float),
                          "theta_e": sub.point_mass_theta_e(m, lc.sigma_crit_angle)}
    return scene


def sample_scene(rng: np.random.Generator, preset: Preset, priors: Priors, task: str,
                 kind: str) -> Scene:
    """Draw one scene of class ``kind`` (a lens-task kind or a substructure class)."""
    if task == "lens":
        scene = (_lens_scene(rng, preset, priors, task) if kind == LENS_KIND
                 else _nonlens_scene(rng, preset, priors, kind))
    elif task == "substructure":
        scene = _add_substructure(rng, _lens_scene(rng, preset, priors, task), priors, kind)
    else:
        raise ValueError(f"unknown task {task!r}")
    scene.labels = {**TASK_LABELS[task], **scene.labels}
    return scene
