"""Arcs painted onto real cutouts (pipeline.simulate.inject): physics, untouched pixels, noise,
and a training set made on Ray from a folder of real and synthetic cutouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.simulate import default_priors, get_preset
from pipeline.simulate.inject import (
    Background,
    backgrounds_of,
    inject_lens,
    measure_galaxy,
    poisson_noise,
)

EUCLID = "tests/data/real/euclid/EUCLJ174517.55+655612.5.fits"


def _galaxy_fits(path, scale: float, n: int = 80, seed: int = 0, bands: int = 1,
                 q: float = 0.6) -> None:
    """A synthetic cutout: an elliptical Gaussian galaxy in white noise, with a TAN WCS."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    r2 = (xx / 1.0) ** 2 + (yy / q) ** 2
    img = 50 * np.exp(-r2 / (2 * (0.5 / scale) ** 2)) + rng.normal(0, 1, (bands, n, n))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [n / 2, n / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    fits.PrimaryHDU(img.astype(np.float32).squeeze(), header=w.to_header()).writeto(path)


def _ring_radius(arcs: np.ndarray, lab: dict, scale: float) -> float:
    """Radius (arcsec) of the peak of the arcs' azimuthally averaged profile about the lens."""
    n = arcs.shape[-1]
    yy, xx = (np.indices((n, n)) - (n - 1) / 2) * scale
    r = np.hypot(xx - lab["x_lens"], yy - lab["y_lens"]).ravel()
    bins = np.arange(0, r.max(), scale / 2)
    idx = np.digitize(r, bins)
    prof = [arcs.sum(0).ravel()[idx == i].mean() if (idx == i).any() else 0
            for i in range(1, len(bins))]
    return float(bins[int(np.argmax(prof))] + scale / 4)


@pytest.mark.parametrize("scale", [0.1, 0.06])
def test_injected_ring_radius_is_theta_e_at_the_backgrounds_pixel_scale(tmp_path, scale):
    """A round galaxy and a small source behind its centre give an Einstein ring at theta_E,
    measured on the background's own grid."""
    _galaxy_fits(tmp_path / "g.fits", scale, q=1.0)
    (bg,), bad = backgrounds_of(str(tmp_path / "g.fits"), 64)
    assert not bad and bg.pixel_scale == pytest.approx(scale, rel=1e-6)
    g = measure_galaxy(bg.image, bg.pixel_scale)
    assert abs(g["x"]) < 2 * scale and g["q"] > 0.85
    priors = default_priors("euclid-vis").replace(
        beta_max=0.02, r_eff_source=(0.03, 0.04), max_clumps=0, shear=(0.0, 0.0),
        q_mass_scatter=0.0)
    for seed in range(4):
        _, arcs, lab = inject_lens(np.random.default_rng(seed), bg, get_preset("euclid-vis"),
                                   priors, snr_range=(500, 500))
        assert lab["is_lens"] == 1 and lab["snr_arcs"] == pytest.approx(500, rel=0.05)
        assert abs(_ring_radius(arcs, lab, scale) - lab["theta_e"]) < 1.5 * scale


def test_einstein_radius_follows_the_measured_galaxy_size(tmp_path):
    _galaxy_fits(tmp_path / "g.fits", 0.1)
    (bg,), _ = backgrounds_of(str(tmp_path / "g.fits"), 64)
    r_half = measure_galaxy(bg.image, bg.pixel_scale)["r_half"]
    for seed in range(10):
        _, _, lab = inject_lens(np.random.default_rng(seed), bg, get_preset("euclid-vis"),
                                default_priors("euclid-vis"))
        assert 0.5 * r_half - 1e-9 <= lab["theta_e"] <= 3 * r_half + 1e-9


def test_pixels_the_arcs_do_not_reach_are_untouched_and_the_files_psf_is_used():
    (bg,), bad = backgrounds_of(EUCLID, 64, ["VIS"])
    assert not bad and bg.psf[0] is not None and bg.psf[0].sum() == pytest.approx(1.0)
    img, arcs, lab = inject_lens(np.random.default_rng(1), bg, get_preset("euclid-vis"),
                                 default_priors("euclid-vis"))
    far = arcs == 0
    assert far.mean() > 0.2 and (~far).any()
    np.testing.assert_array_equal(img[far], bg.image.astype(np.float32)[far])
    assert lab["kind"] == "injected" and np.isnan(lab["mag_source"])


def test_poisson_noise_of_the_added_flux_has_the_modelled_variance():
    arcs = np.zeros((2, 64, 64))
    arcs[..., :32] = 40.0
    draws = np.stack([poisson_noise(np.random.default_rng(i), arcs, [0.5, 2.0]) for i in range(50)])
    assert draws[..., 32:].std() == 0  # nothing added, no noise
    assert draws[:, 0, :, :32].var() == pytest.approx(20.0, rel=0.05)
    assert draws[:, 1, :, :32].var() == pytest.approx(80.0, rel=0.05)


def test_band_count_must_match_the_preset():
    from pipeline.simulate import ConfigError

    bg = Background(np.zeros((2, 64, 64)), 0.2, ("g", "r"), (None, None), "x")
    with pytest.raises(ConfigError, match="2 band"):
        inject_lens(np.random.default_rng(0), bg, get_preset("ground-gri"),
                    default_priors("ground-gri"))


@pytest.mark.timeout(600)
def test_simulate_backgrounds_on_ray_writes_pairs_and_accounts_for_every_cutout(ray_local, tmp_path):
    from pipeline.cli import main
    from pipeline.io import read_fits_file

    src = tmp_path / "cutouts"
    src.mkdir()
    for i in range(8):
        _galaxy_fits(src / f"g{i}.fits", 0.101, seed=i)
    (src / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    out = tmp_path / "inj"
    assert main(["simulate", "--preset", "euclid-vis", "--task", "lens", "--backgrounds",
                 str(src), "--out", str(out), "--seed", "4", "--splits", "0.5,0.25,0.25",
                 "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["n"] == 16 and m["counts"] == {"real": 8, "injected": 8}
    assert len(m["skipped"]) == 1 and "broken" in m["skipped"][0][0]
    assert m["pixel_scale"] == pytest.approx(0.101) and m["bands"] == ["VIS"]
    rows = {}
    for split in m["splits"].values():
        for s in split["shards"]:
            r = read_fits_file(str(out / s["path"]))
            for i, bg in enumerate(r["background"]):
                rows.setdefault(bg, []).append((r["is_lens"][i], r["image"][i]))
    assert len(rows) == 8
    for pair in rows.values():  # each background once untouched and once with arcs
        assert sorted(p[0] for p in pair) == [0, 1]
        (neg,), (pos,) = [p[1] for p in pair if p[0] == 0], [p[1] for p in pair if p[0] == 1]
        assert (pos - neg).sum() > 0 and math.isfinite(float(pos.sum()))
