"""Scenes: backend-independent descriptions of one cutout, drawn from the priors.

A :class:`Scene` is plain data in lenstronomy's naming (profile names + keyword dicts), so the
lenstronomy and caustics backends render the same thing and a scene can be logged. Light
components carry a magnitude per band instead of an amplitude; renderers convert.

Lens task: every cutout starts from the same galaxy field (``galaxies.main_galaxy`` +
neighbours + faint galaxies + stars, its own PSF and noise correlation); a lens adds a mass
model and a lensed source, a hard negative adds what looks like lensing. :func:`unlensed` is the
same scene without its lensed source: matched lens sets (``generate``) pair the two, so only the
arc separates the classes. The substructure task keeps its narrow early-type deflector and the
nominal Gaussian PSF.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.io.schema import IS_LENS, SUBSTRUCTURE_CLASS
from pipeline.simulate import galaxies as gal
from pipeline.simulate import psf as _psf
from pipeline.simulate import substructure as sub
from pipeline.simulate.galaxies import Light, u
from pipeline.simulate.instruments import Preset
from pipeline.simulate.multiple_imaging import point_images
from pipeline.simulate.priors import LENS_KIND, SUBSTRUCTURE_CLASSES, Priors
from pipeline.simulate.real_sources import real_source

MAX_SOURCE_DRAWS = 100  # source positions tried for a multiply imaged one (multiple_imaging)

# Label columns of each task, with the value used when a label does not apply to a row.
NAN = float("nan")
LENS_LABELS: dict[str, object] = {
    IS_LENS: 0, "kind": "", "theta_e": 0.0, "mag_source": NAN, "mag_lens": NAN,
    "snr_arcs": 0.0, "z_lens": NAN, "z_source": NAN, "gamma_slope": NAN, "e1_lens": NAN,
    "e2_lens": NAN, "gamma1": NAN, "gamma2": NAN, "x_lens": 0.0, "y_lens": 0.0,
    "x_source": NAN, "y_source": NAN, "r_eff_source": NAN, "r_eff_lens": NAN, "n_clumps": 0,
    "source_stamp": -1, "n_images": 0, "mu_total": NAN,
    "galaxy_type": "", "n_neighbours": 0, "n_stars": 0,
}
SUBSTRUCTURE_LABELS: dict[str, object] = {
    **LENS_LABELS,
    SUBSTRUCTURE_CLASS: 0, "substructure_class": "", "log10_m_axion": NAN, "sigma_sub": 0.0,
    "n_subhalos": 0, "log10_m_vortex": NAN, "vortex_length": 0.0,
}
TASK_LABELS = {"lens": LENS_LABELS, "substructure": SUBSTRUCTURE_LABELS}


@dataclass
class Scene:
    """Everything needed to render one cutout (noise is added by the caller from its own RNG).

    ``lens``: mass profiles [(name, kwargs)], empty for non-lenses. ``source``: lensed light.
    ``light``: unlensed light (deflector, neighbours, non-lens galaxies). ``point_masses``:
    substructure as arrays ``x``, ``y``, ``theta_e`` ("), rendered in the lens plane.
    ``psf``: a kernel per band (None: each band's nominal Gaussian); ``stars``: foreground
    stars (``galaxies.stars``); ``dust``: the deflector's dust lane or None; ``noise_corr``: the
    weight of the correlated-noise kernel (``noise.add_noise``).
    """

    kind: str
    lens: list[tuple[str, dict]] = field(default_factory=list)
    source: list[Light] = field(default_factory=list)
    light: list[Light] = field(default_factory=list)
    point_masses: dict[str, np.ndarray] | None = None
    labels: dict = field(default_factory=dict)
    psf: list[np.ndarray] | None = None
    stars: list[dict] = field(default_factory=list)
    dust: dict | None = None
    noise_corr: float = 0.0
    artefacts: bool = False  # add the preset's detector artefacts after the noise


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


def _centre(rng, preset: Preset, priors: Priors) -> tuple[float, float]:
    d = priors.centre_offset * preset.pixel_scale
    return float(rng.uniform(-d, d)), float(rng.uniform(-d, d))


def _redshifts(rng, priors: Priors) -> tuple[float, float]:
    z_l = u(rng, priors.z_lens)
    z_s = u(rng, (max(priors.z_source[0], z_l + priors.dz_min), priors.z_source[1]))
    return z_l, z_s


def source_light(rng, preset: Preset, priors: Priors, mag: float, centre, max_clumps: int,
                 sources=()) -> tuple[list[Light], dict]:
    """A source galaxy: one of the real ``sources`` stamps when given (``real_sources.real_source``),
    else a clumpy Sersic (``galaxies.star_forming``)."""
    if sources:
        return real_source(rng, preset, priors, mag, centre, sources)
    return gal.star_forming(rng, preset, priors, mag, centre, max_clumps)


def add_lens(rng, scene: Scene, info: dict, centre, preset: Preset, priors: Priors,
              task: str, sources=()) -> Scene:
    """Make ``scene`` a lens: EPL + shear whose shape follows the light's (``info`` q, phi),
    lensing a clumpy Sersic source (or one of the real ``sources`` stamps) whose centre it
    images at least twice (``multiple_imaging.point_images``)."""
    theta_e = u(rng, priors.theta_e if task == "lens" else priors.theta_e_substructure)
    q_m = float(np.clip(info["q"] + rng.normal(0, priors.q_mass_scatter), 0.4, 1.0))
    phi_m = info["phi"] + math.radians(rng.normal(0, priors.phi_mass_scatter_deg))
    e1, e2 = gal.ellipticity(phi_m, q_m)
    slope = u(rng, priors.gamma_slope)
    g = u(rng, priors.shear)
    phi_g = rng.uniform(0, math.pi)
    g1, g2 = g * math.cos(2 * phi_g), g * math.sin(2 * phi_g)
    scene.lens = [("EPL_NUMBA", {"theta_E": theta_e, "gamma": slope, "e1": e1, "e2": e2,
                                 "center_x": centre[0], "center_y": centre[1]}),
                  ("SHEAR", {"gamma1": g1, "gamma2": g2, "ra_0": centre[0], "dec_0": centre[1]})]
    beta_max = priors.beta_max if task == "lens" else priors.beta_max_substructure
    for _ in range(MAX_SOURCE_DRAWS):  # uniform over the multiply imaged part of the disk
        beta = beta_max * theta_e * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        src_c = (centre[0] + beta * math.cos(a), centre[1] + beta * math.sin(a))
        n_images, mu_total = point_images(scene.lens, *src_c)
        if n_images >= 2:
            break
    else:  # close behind the deflector's centre a source is always multiply imaged
        src_c = (centre[0] + 0.01 * theta_e, centre[1] + 0.01 * theta_e)
        n_images, mu_total = point_images(scene.lens, *src_c)
    mag_s = u(rng, priors.mag_source if task == "lens" else priors.mag_source_substructure)
    clumps = priors.max_clumps if task == "lens" else priors.max_clumps_substructure
    scene.source, sinfo = source_light(rng, preset, priors, mag_s, src_c, clumps, sources)
    z_l, z_s = _redshifts(rng, priors)
    scene.kind = LENS_KIND
    scene.labels.update({
        IS_LENS: 1, "kind": LENS_KIND, "theta_e": theta_e, "mag_source": mag_s,
        "z_lens": z_l, "z_source": z_s, "gamma_slope": slope, "e1_lens": e1, "e2_lens": e2,
        "gamma1": g1, "gamma2": g2, "x_source": src_c[0], "y_source": src_c[1],
        "n_images": n_images, "mu_total": mu_total, **sinfo})
    return scene


def _substructure_lens(rng, preset: Preset, priors: Priors) -> Scene:
    """The substructure task's lens: an early-type deflector (narrow priors), nominal PSF."""
    centre = _centre(rng, preset, priors)
    light, info = gal.deflector_light(rng, preset, priors, centre)
    scene = Scene(LENS_KIND, light=[light], labels={
        "mag_lens": info["mag_lens"], "r_eff_lens": info["r_eff_lens"], "x_lens": centre[0],
        "y_lens": centre[1]})
    return add_lens(rng, scene, info, centre, preset, priors, "substructure")


def _field_scene(rng, preset: Preset, priors: Priors, kind: str, sources=()) -> Scene:
    """A lens-task cutout of class ``kind``: the galaxy field (every kind alike), then the lens
    or the hard-negative feature of its kind (source galaxies from ``sources`` when given, for
    the lenses and the blends alike)."""
    centre = _centre(rng, preset, priors)
    light, info, dust = gal.main_galaxy(rng, preset, priors, centre, strong_arms=kind == "spiral")
    around = gal.neighbours(rng, preset, priors, centre, info["mag_lens"])
    light += around + gal.faint_galaxies(rng, preset, priors)
    scene = Scene("galaxy", light=light, stars=gal.stars(rng, preset, priors), dust=dust,
                  psf=_psf.draw_psfs(rng, preset), noise_corr=u(rng, preset.noise_corr),
                  artefacts=True)
    scene.labels = {IS_LENS: 0, "kind": kind, "mag_lens": info["mag_lens"],
                    "r_eff_lens": info["r_eff_lens"], "galaxy_type": info["galaxy_type"],
                    "x_lens": centre[0], "y_lens": centre[1], "n_neighbours": len(around),
                    "n_stars": len(scene.stars)}
    scene.kind = kind
    if kind == LENS_KIND:
        return add_lens(rng, scene, info, centre, preset, priors, "lens", sources)
    if kind == "ring_galaxy":
        scene.light += gal.star_forming_ring(rng, preset, priors, centre, info["mag_lens"])
    elif kind == "companion":
        close = gal.neighbours(rng, preset, priors, centre, info["mag_lens"], priors.companion_sep)
        scene.light += close
        scene.labels["n_neighbours"] += len(close)
    elif kind == "background_blend":
        mag_s = u(rng, priors.mag_source)
        sep, a = u(rng, priors.blend_sep), rng.uniform(0, 2 * math.pi)
        c = (centre[0] + sep * math.cos(a), centre[1] + sep * math.sin(a))
        parts, sinfo = source_light(rng, preset, priors, mag_s, c, priors.max_clumps, sources)
        scene.light += parts
        scene.labels.update({"mag_source": mag_s, "x_source": c[0], "y_source": c[1], **sinfo})
    elif kind not in ("galaxy", "spiral"):
        raise ValueError(f"unknown lens-task kind {kind!r}")
    return scene


def unlensed(scene: Scene) -> Scene:
    """The same cutout without its lens: same galaxy field, PSF and noise model, no lensed
    source; lens labels back to their 'does not apply' values."""
    keep = ("mag_lens", "r_eff_lens", "galaxy_type", "x_lens", "y_lens", "n_neighbours",
            "n_stars")
    labels = {**LENS_LABELS, **{k: scene.labels[k] for k in keep}, "kind": "galaxy"}
    return dataclasses.replace(scene, kind="galaxy", lens=[], source=[], point_masses=None,
                               labels=labels)


def _add_substructure(rng, scene: Scene, priors: Priors, cls: str) -> Scene:
    """Add CDM subhalos or a vortex (point masses) to a lens scene; fill the DM labels."""
    lab = scene.labels
    lc = sub.lens_cosmo(lab["z_lens"], lab["z_source"])
    kpc_per_arcsec = lc.dd * 1e3 / 206264.806
    centre = (lab["x_lens"], lab["y_lens"])
    lab.update({SUBSTRUCTURE_CLASS: SUBSTRUCTURE_CLASSES.index(cls), "substructure_class": cls,
                "log10_m_axion": u(rng, priors.log10_m_axion), "sigma_sub": 0.0})
    if cls == "cdm":
        sigma_sub = u(rng, priors.sigma_sub)
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
        log_m = u(rng, priors.log10_m_vortex)
        m = np.full(priors.vortex_points, 10**log_m / priors.vortex_points)
        lab.update({"log10_m_vortex": log_m, "vortex_length": length})
    else:
        return scene
    scene.point_masses = {"x": np.asarray(x, float), "y": np.asarray(y, float),
                          "theta_e": sub.point_mass_theta_e(m, lc.sigma_crit_angle)}
    return scene


def sample_scene(rng: np.random.Generator, preset: Preset, priors: Priors, task: str,
                 kind: str, sources=()) -> Scene:
    """Draw one scene of class ``kind`` (a lens-task kind or a substructure class); lens-task
    source galaxies from the real ``sources`` stamps when given."""
    if task == "lens":
        scene = _field_scene(rng, preset, priors, kind, sources)
    elif task == "substructure":
        scene = _add_substructure(rng, _substructure_lens(rng, preset, priors), priors, kind)
    else:
        raise ValueError(f"unknown task {task!r}")
    scene.labels = {**TASK_LABELS[task], **scene.labels}
    return scene
