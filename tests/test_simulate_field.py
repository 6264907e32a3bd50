"""The lens task's galaxy field: matched pairs, real PSFs, correlated noise, artefacts, priors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.simulate import default_priors, get_preset, make_config
from pipeline.simulate.generate import ShardSpec, shard_scenes
from pipeline.simulate.noise import correlated_normal
from pipeline.simulate.psf import distort, draw_psfs, library, nominal_kernel
from pipeline.simulate.render import LenstronomyRenderer
from pipeline.simulate.scenes import sample_scene


def _width(kernel: np.ndarray) -> tuple[float, float]:
    """sqrt of the second moments along the grid axes (pixels)."""
    yy, xx = np.indices(kernel.shape) - kernel.shape[0] // 2
    return math.sqrt((kernel * xx**2).sum()), math.sqrt((kernel * yy**2).sum())


# ----------------------------------------------------------------------------- matched lens sets
def test_matched_lens_pairs_differ_only_in_the_lensed_source():
    cfg = make_config("euclid-vis", "lens", 40, 9, matched=True)
    scenes, rngs = shard_scenes(cfg, ShardSpec("train", 0, 40, "unused.fits"))
    kinds = [s.labels["kind"] for s in scenes]
    hard = [k for k in kinds if k not in ("lens", "galaxy")]
    assert len(hard) == 8  # hard_negative_fraction 0.2 of 40 rows
    assert kinds.count("lens") == kinds.count("galaxy") == 16
    i = 0
    pairs = 0
    while i < len(scenes):  # pairs are consecutive rows, in either order
        if kinds[i] in ("lens", "galaxy"):
            a, b = scenes[i], scenes[i + 1]
            assert {a.labels["kind"], b.labels["kind"]} == {"lens", "galaxy"}
            lens, twin = (a, b) if a.lens else (b, a)
            assert twin.light is lens.light and twin.stars == lens.stars
            assert all(np.array_equal(p, q) for p, q in zip(twin.psf, lens.psf, strict=True))
            assert twin.noise_corr == lens.noise_corr and not twin.source and not twin.lens
            assert twin.labels["is_lens"] == 0 and twin.labels["theta_e"] == 0
            assert twin.labels["mag_lens"] == lens.labels["mag_lens"]
            pairs += 1
            i += 2
        else:
            i += 1
    assert pairs == 16
    noise = [r.normal(size=4) for r in rngs[:2]]
    assert not np.allclose(noise[0], noise[1])  # each row its own noise


def test_galaxy_field_is_the_same_prior_for_lenses_and_non_lenses():
    """Deflectors and non-lens galaxies: same distribution of size, magnitude and type."""
    preset, priors = get_preset("euclid-vis"), default_priors("euclid-vis")
    draws = {k: [sample_scene(np.random.default_rng(1000 + i), preset, priors, "lens", k).labels
                 for i in range(150)] for k in ("lens", "galaxy")}
    for col in ("r_eff_lens", "mag_lens"):
        a = np.array([d[col] for d in draws["lens"]])
        b = np.array([d[col] for d in draws["galaxy"]])
        np.testing.assert_allclose(a, b)  # same stream: the field is drawn before the lens
    types = {d["galaxy_type"].split("+")[0] for d in draws["galaxy"]}
    assert types == {"sersic", "disk"}
    r = np.array([d["r_eff_lens"] for d in draws["galaxy"]])
    assert r.min() < 0.3 and r.max() > 1.5  # small to cutout-filling galaxies


# ----------------------------------------------------------------------------- PSFs
def test_real_psf_libraries_are_normalised_and_varied_per_image():
    for name, bands in (("euclid-vis", ["VIS"]), ("ground-gri", ["g", "r", "i"])):
        lib = library(name)
        assert sorted(lib) == sorted(bands)
        for kernels in lib.values():
            for k in kernels:
                assert k.sum() == pytest.approx(1.0) and k.min() >= 0
                assert k[0].max() < 1e-3 * k.max()  # tapered: no square around bright stars
    preset = get_preset("euclid-vis")
    widths = [_width(draw_psfs(np.random.default_rng(i), preset)[0])[0] for i in range(20)]
    assert np.std(widths) > 0.02 * np.mean(widths)  # not one PSF for every image


@pytest.mark.parametrize("scale", [0.8, 1.3])
def test_distort_scales_width_and_adds_ellipticity(scale):
    base = nominal_kernel(get_preset("ground-gri").bands[1])
    wx, _ = _width(base)
    k = distort(base, scale, 0.0, 0.0)
    assert k.sum() == pytest.approx(1.0)
    assert _width(k)[0] == pytest.approx(scale * wx, rel=0.05)
    e = distort(base, 1.0, 0.1, 0.0)  # stretched along x, squeezed along y
    ex, ey = _width(e)
    assert ex / ey == pytest.approx(1.1 / 0.9, rel=0.05)


def test_psf_of_a_scene_is_what_the_stars_show():
    """A star renders as its scene's PSF kernel times its flux (no other blurring)."""
    from pipeline.simulate.optics import observe
    from pipeline.simulate.scenes import Scene

    preset = get_preset("euclid-vis")
    kernel = draw_psfs(np.random.default_rng(3), preset)[0]
    scene = Scene("galaxy", stars=[{"x": 0.0, "y": 0.0, "mags": {"VIS": 20.0}, "spike_angle": 0.0}],
                  psf=[kernel])
    empty = np.zeros((1, preset.size, preset.size))
    img = observe(scene, empty, empty, preset).clean[0]
    flux = float(preset.bands[0].mag_to_cps(20.0))
    assert img.sum() == pytest.approx(flux, rel=0.02)  # spikes included, nothing lost
    c, h = (preset.size - 1) // 2, kernel.shape[0] // 2
    core = img[c - 2:c + 3, c - 2:c + 3] / flux
    # centred on a pixel corner: the kernel convolved with a 2x2 bilinear split
    assert core.max() == pytest.approx(kernel[h, h], rel=0.5)


# ----------------------------------------------------------------------------- noise, artefacts
@pytest.mark.parametrize("a", [0.0, 0.15, 0.3])
def test_correlated_noise_has_unit_variance_and_the_modelled_correlation(a):
    z = correlated_normal(np.random.default_rng(0), (40, 64, 64), a)
    assert z.std() == pytest.approx(1.0, rel=0.02)
    rho = np.corrcoef(z[..., :-1].ravel(), z[..., 1:].ravel())[0, 1]
    assert rho == pytest.approx(2 * a / (1 + 2 * a**2), abs=0.02)


def test_artefacts_are_sharp_and_saturation_clips():
    from pipeline.simulate.artefacts import add_artefacts

    preset = get_preset("euclid-vis")
    sig = preset.bands[0].background_noise
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(30):
        img = np.zeros((1, 64, 64))
        img[0, 30:34, 30:34] = 1e4  # a saturated core
        counts = add_artefacts(rng, img, preset)
        assert img.max() <= preset.saturation
        if counts["cosmic_rays"] or counts["hot_pixels"]:
            hits += 1
            other = img.copy()
            other[0, 30:34, 30:34] = 0
            # artefacts are single pixels/tracks well above the noise
            assert other.max() >= 5 * sig
    assert hits > 0


def test_dust_lane_absorbs_along_the_major_axis():
    from pipeline.simulate.optics import dust_transmission
    from pipeline.simulate.scenes import Scene

    preset = get_preset("euclid-vis")
    scene = Scene("galaxy", dust={"x": 0.0, "y": 0.0, "phi": 0.0, "tau": 1.0, "width": 0.1,
                                  "offset": 0.0, "length": 1.0})
    t = dust_transmission(scene, preset)[0]
    c = preset.size // 2
    assert t[c, c] < 0.5  # on the lane, at the centre
    assert t[c + 15, c] > 0.99  # 1.5" across the lane: clear
    assert t[c, c + 5] < t[c + 3, c]  # along the lane it stays dark longer than across


def test_every_field_kind_renders_finite_in_every_preset():
    for name in ("euclid-vis", "hst", "ground-gri"):
        preset, priors = get_preset(name), default_priors(name)
        r = LenstronomyRenderer(preset)
        for kind in priors.class_fractions("lens"):
            for seed in range(3):
                out = r.render(sample_scene(np.random.default_rng(seed), preset, priors, "lens", kind))
                assert np.isfinite(out.clean).all() and out.clean.sum() > 0


# ----------------------------------------------------------------------------- shortcut test
@pytest.mark.timeout(600)
def test_moment_baseline_is_at_chance_on_a_matched_set_and_finds_a_planted_shortcut(
        ray_local, tmp_path):
    """Gradient boosting on image moments cannot tell lenses from non-lenses on a matched set
    (the issue's bar: AUC <= 0.6); it does find a galaxy-size cue like the one today's sets had
    (lenses on small galaxies, non-lenses on large ones), so a low AUC is not a broken model."""
    from pipeline.simulate import simulate
    from pipeline.train.shortcut import fit_auc, shortcut_auc, split_moments

    out = tmp_path / "matched"
    simulate("euclid-vis", "lens", 3000, 21, out, matched=True, shard_size=500,
             split_fractions=(0.6, 0.05, 0.35), progress=False)
    res = shortcut_auc(out)
    assert res["n_test"] == 1050 and res["auc"] <= 0.6

    def biased(split):
        x, y, cols = split_moments(out, split, columns=("r_eff_lens",))
        big = cols["r_eff_lens"] > np.median(cols["r_eff_lens"])
        keep = (y == 1) & ~big | (y == 0) & big
        return x[keep], y[keep]

    assert fit_auc(*biased("train"), *biased("test")) > 0.7
