"""Every prior of the simulator, in one place.

A range ``(lo, hi)`` means uniform on [lo, hi] unless the comment says otherwise. Magnitudes are
AB in the preset's reference band (VIS, r or F160W); other bands follow from the colours below.
Angles are in arcsec, masses in M_sun, the axion mass in eV. ``Priors`` is a frozen dataclass so a
set of priors is data: it is validated before any work, logged in the manifest and can be
overridden field by field (``lensray simulate --prior theta_e=0.8,2.5``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.io.schema import SUBSTRUCTURE_CLASSES
from pipeline.simulate.instruments import ConfigError, Preset

Range = tuple[float, float]

# ----------------------------------------------------------------------------- classes
# Lens task: the lens fraction is a Priors field; the non-lenses split as below (fractions of the
# non-lens part). Every kind starts from the same galaxy field (main galaxy, neighbours, faint
# galaxies, stars: see the "galaxy field" priors); the hard negatives add what looks like lensing.
NONLENS_KINDS: dict[str, float] = {
    "galaxy": 0.5,  # the field alone: the lens galaxy population without a source
    "spiral": 0.15,  # a disk with bright clumpy blue arms (arc-like)
    "ring_galaxy": 0.10,  # a clumpy blue star-forming ring around the galaxy (ring-like)
    "companion": 0.10,  # 1-2 close unlensed neighbours (multiple-image-like)
    "background_blend": 0.15,  # an unlensed blue source-like galaxy beside the main one
}
HARD_NEGATIVES = ("spiral", "ring_galaxy", "companion", "background_blend")
LENS_KIND = "lens"

# Substructure task: three classes as DeepLense (SUBSTRUCTURE_CLASSES, named with the other label
# columns in pipeline.io.schema).

# ----------------------------------------------------------------------------- colours
# Colours relative to the reference band (mag offset per band), for the ground-gri preset:
# red = early-type at z~0.5 (g-r ~ 1.3, r-i ~ 0.5); blue = star-forming source at z~1-2.
COLOURS: dict[str, dict[str, float]] = {
    "red": {"g": 1.3, "r": 0.0, "i": -0.5},
    "blue": {"g": 0.3, "r": 0.0, "i": -0.15},
    "disk": {"g": 0.6, "r": 0.0, "i": -0.3},
}
COLOUR_SCATTER = 0.1  # Gaussian scatter (mag) added per object and band to the colours above


@dataclass(frozen=True)
class Priors:
    """Parameter priors of both tasks (uniform ranges unless noted)."""

    # --- classes
    lens_fraction: float = 0.5  # lens task: fraction of lenses
    nonlens_kinds: dict[str, float] = field(default_factory=lambda: dict(NONLENS_KINDS))
    substructure_fractions: dict[str, float] = field(
        default_factory=lambda: {c: 1 / 3 for c in SUBSTRUCTURE_CLASSES}
    )
    # --- deflector (EPL + external shear)
    theta_e: Range = (0.5, 2.0)  # Einstein radius ("), lens task
    theta_e_substructure: Range = (1.0, 1.8)  # substructure task: large, well-resolved rings
    gamma_slope: Range = (1.8, 2.2)  # EPL logarithmic slope (2 = isothermal)
    q_lens: Range = (0.5, 1.0)  # axis ratio of the lens light; the mass follows it (below)
    q_mass_scatter: float = 0.05  # Gaussian scatter of mass vs light axis ratio
    phi_mass_scatter_deg: float = 10.0  # Gaussian scatter of mass vs light position angle
    shear: Range = (0.0, 0.08)  # external shear modulus, random direction
    centre_offset: float = 0.5  # lens centre uniform within +-this many pixels of the centre
    z_lens: Range = (0.2, 0.9)
    z_source: Range = (0.8, 3.0)  # drawn on [max(lo, z_lens + dz_min), hi]
    dz_min: float = 0.3
    # --- substructure task: deflector light (early-type Sersic)
    mag_lens: Range = (18.0, 21.5)
    r_eff_lens: Range = (0.3, 1.5)
    n_lens: Range = (3.0, 5.0)
    # --- lens task: the galaxy field, one prior for the deflectors of lenses and the galaxies of
    # non-lenses alike, so size, brightness, profile and surroundings carry no label information
    disk_fraction: float = 0.5  # bulge + disk galaxies (else one Sersic of any index)
    mag_galaxy: Range = (17.0, 22.0)  # total magnitude of the main galaxy
    r_eff_galaxy: Range = (0.15, 2.0)  # (") log-uniform; large ones fill the cutout
    n_galaxy: Range = (0.5, 6.0)  # Sersic index of one-component galaxies
    q_galaxy: Range = (0.3, 1.0)
    bulge_fraction: Range = (0.05, 0.7)  # bulge-to-total flux of disks
    n_bulge: Range = (1.5, 4.0)
    n_disk: Range = (0.5, 1.5)
    bulge_size: Range = (0.1, 0.5)  # bulge R_eff / disk R_eff
    q_disk: Range = (0.15, 1.0)  # edge-on to face-on
    twist_deg: float = 30.0  # bulge PA = disk PA + N(0, this): isophote twists
    bar_fraction: float = 0.3  # of disks
    bar_flux: Range = (0.05, 0.15)
    bar_length: Range = (0.4, 1.0)  # x disk R_eff
    bar_q: Range = (0.15, 0.35)
    arms_fraction: float = 0.7  # of disks: clumpy spiral arms (2-4 of them)
    arms_flux: Range = (0.08, 0.35)
    knots_fraction: float = 0.5  # of disks: star-forming knots scattered over the disk
    knots_flux: Range = (0.05, 0.25)
    inner_ring_fraction: float = 0.15  # of disks: a resonance ring at 0.5-1.5 disk radii
    inner_ring_flux: Range = (0.05, 0.2)
    strong_arms_flux: Range = (0.2, 0.5)  # the spiral hard negative
    dust_fraction: float = 0.4  # of inclined disks (q < 0.6): a dust lane
    dust_tau: Range = (0.5, 2.0)  # central optical depth of the lane (reference band)
    neighbour_fraction: float = 0.5  # cutouts with 1..max_neighbours neighbours
    max_neighbours: int = 3
    neighbour_sep: Range = (1.0, 3.2)  # (")
    neighbour_dmag: Range = (0.0, 4.0)  # neighbour minus main galaxy magnitude
    neighbour_r_eff: Range = (0.1, 0.8)  # (") log-uniform
    faint_galaxies: float = 1.5  # mean number (Poisson) of faint field galaxies per cutout
    mag_faint: Range = (23.0, 26.0)
    star_fraction: float = 0.25  # cutouts with 1-2 foreground stars
    mag_star: Range = (16.0, 23.0)  # bright ones saturate and show spikes (space presets)
    hard_negative_fraction: float = 0.2  # matched lens sets: extra hard negatives, of all rows
    # --- source (Sersic + Gaussian star-forming clumps)
    mag_source: Range = (21.5, 26.0)  # unlensed, lens task: spans faint to bright arcs
    mag_source_substructure: Range = (20.5, 23.0)  # substructure task: bright arcs
    r_eff_source: Range = (0.05, 0.35)
    n_source: Range = (0.7, 2.0)
    q_source: Range = (0.4, 1.0)
    beta_max: float = 0.8  # source offset: radius sqrt(U) * beta_max * theta_e, redrawn until
    # the source is multiply imaged (scenes.add_lens)
    beta_max_substructure: float = 0.4  # substructure task: near-central sources, long arcs
    max_clumps: int = 3  # 0..max_clumps clumps, each 5-20% of the source flux
    max_clumps_substructure: int = 0  # smooth sources: clumps would mimic subhalo perturbations
    clump_flux: Range = (0.05, 0.2)
    clump_sigma: Range = (0.02, 0.08)
    # --- hard negatives (added to the galaxy field)
    companion_sep: Range = (0.5, 2.0)  # (") close neighbours, 1-2 of them
    blend_sep: Range = (0.3, 2.0)  # (") unlensed blue source-like galaxy
    ring_radius: Range = (0.6, 2.0)  # (") star-forming ring
    ring_flux_fraction: Range = (0.1, 0.4)  # ring flux / (ring + galaxy) flux
    spiral_pitch_deg: Range = (10.0, 25.0)
    # --- substructure (point-mass subhalos; DeepLense-like)
    sigma_sub: Range = (0.05, 0.2)  # CDM normalisation (kpc^-2) of dN/dm dA at m0 = 1e8 (see docs)
    m_sub: Range = (1e8, 1e10)  # subhalo mass range (M_sun), power law dN/dm ~ m^alpha
    alpha_sub: float = -1.9
    sub_radius: float = 1.5  # subhalos within sub_radius * theta_e of the lens centre
    log10_m_axion: Range = (-24.0, -22.0)  # eV; sets the vortex length (de Broglie wavelength)
    log10_m_vortex: Range = (10.3, 10.8)  # total vortex mass (M_sun), DeepLense-like (see docs)
    vortex_points: int = 64  # point masses spread evenly along the vortex line
    max_vortex_length: float = 8.0  # (") de Broglie lengths above this are clipped

    def replace(self, **changes) -> Priors:
        """A copy with some fields changed (ranges given as 2-sequences), validated."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown prior(s) {unknown} (known: {sorted(self.to_dict())})")
        fixed = {}
        for k, v in changes.items():
            cur = getattr(self, k)
            fixed[k] = tuple(float(x) for x in v) if isinstance(cur, tuple) else type(cur)(v)
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, preset: Preset) -> Priors:
        """Raise ConfigError naming the prior if it is impossible; return self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if len(v) != 2 or not v[0] <= v[1]:
                    raise ConfigError(f"prior {f.name}={v}: need (lo, hi) with lo <= hi")
        positive = ("theta_e", "theta_e_substructure", "r_eff_lens", "r_eff_source", "n_lens",
                    "n_source", "clump_sigma", "m_sub", "ring_radius", "companion_sep",
                    "r_eff_galaxy", "n_galaxy", "neighbour_r_eff", "neighbour_sep", "bulge_size")
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise ConfigError(f"prior {name}={getattr(self, name)} must be > 0")
        for name in ("q_lens", "q_source", "q_galaxy", "q_disk", "bar_q"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"prior {name}=({lo}, {hi}): axis ratios must lie in (0, 1]")
        if not 1.0 < self.gamma_slope[0] <= self.gamma_slope[1] < 3.0:
            raise ConfigError(f"prior gamma_slope={self.gamma_slope}: EPL needs 1 < gamma < 3")
        if self.z_lens[0] <= 0 or self.z_source[1] <= self.z_lens[1] + self.dz_min:
            raise ConfigError(
                f"priors z_lens={self.z_lens}, z_source={self.z_source}, dz_min={self.dz_min}: "
                "no source can lie behind the lens"
            )
        half = preset.fov / 2
        for name in ("theta_e", "theta_e_substructure"):
            if getattr(self, name)[1] > 0.9 * half:
                raise ConfigError(
                    f"prior {name}={getattr(self, name)}: Einstein radius beyond the "
                    f"{preset.fov:.1f}\" field of preset {preset.name!r} at {preset.size} px"
                )
        for name in ("lens_fraction", "disk_fraction", "bar_fraction", "arms_fraction",
                     "knots_fraction", "inner_ring_fraction",
                     "dust_fraction", "neighbour_fraction", "star_fraction",
                     "hard_negative_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"prior {name}={getattr(self, name)} must be in [0, 1]")
        for name in ("nonlens_kinds", "substructure_fractions"):
            fr = getattr(self, name)
            if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1) > 1e-6:
                raise ConfigError(f"prior {name}={fr}: fractions must be >= 0 and sum to 1")
        if set(self.substructure_fractions) != set(SUBSTRUCTURE_CLASSES):
            raise ConfigError(f"substructure_fractions keys must be {SUBSTRUCTURE_CLASSES}")
        unknown = set(self.nonlens_kinds) - set(NONLENS_KINDS)
        if unknown:
            raise ConfigError(f"unknown non-lens kinds {sorted(unknown)} (known: {list(NONLENS_KINDS)})")
        if min(self.beta_max, self.beta_max_substructure) <= 0 or min(self.max_clumps, self.max_clumps_substructure) < 0 or self.vortex_points < 2:
            raise ConfigError("beta_max > 0, max_clumps >= 0 and vortex_points >= 2 are required")
        return self

    def class_fractions(self, task: str) -> dict[str, float]:
        """Fraction of each class (``kind`` for the lens task) in a set."""
        if task == "lens":
            out = {LENS_KIND: self.lens_fraction}
            out.update({k: (1 - self.lens_fraction) * v for k, v in self.nonlens_kinds.items()})
            return out
        if task == "substructure":
            return dict(self.substructure_fractions)
        raise ConfigError(f"unknown task {task!r} (available: lens, substructure)")


# Per-preset defaults: seeing-limited data need larger Einstein radii to show arcs at all.
# Their galaxy fields span their own cutouts (12.8" on the ground, 5.1" for HST).
PRESET_PRIORS: dict[str, dict] = {
    "ground-gri": {"theta_e": (0.8, 3.0), "theta_e_substructure": (1.5, 3.0),
                   "r_eff_galaxy": (0.3, 4.0), "neighbour_sep": (2.0, 6.4),
                   "mag_star": (14.0, 23.0)},
    "hst": {"theta_e": (0.5, 1.8), "theta_e_substructure": (1.0, 1.6),
            "r_eff_galaxy": (0.15, 1.6), "neighbour_sep": (0.8, 2.5)},
}


def default_priors(preset: str | None = None) -> Priors:
    """The default priors, with the overrides of ``PRESET_PRIORS[preset]``."""
    return Priors().replace(**PRESET_PRIORS.get(preset, {}))


def parse_prior_overrides(items: list[str]) -> dict:
    """``["theta_e=0.8,2.5", "lens_fraction=0.3"]`` -> {"theta_e": (0.8, 2.5), ...}."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"prior override {item!r}: expected NAME=VALUE or NAME=LO,HI")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            raise ConfigError(f"prior override {item!r}: values must be numbers") from None
        out[name.strip()] = tuple(nums) if len(nums) > 1 else nums[0]
    return out
