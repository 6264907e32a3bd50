"""Real galaxies as lensed sources (pipeline.simulate.real_sources, ``lensray simulate --sources``):
stamp cleaning, flux and size of the placed source, lensing magnifies it, and a set made on Ray
from the HST fixtures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.simulate import default_priors, get_preset
from pipeline.simulate.real_sources import SourceStamp, clean_stamp, read_source_stamps, real_source
from pipeline.simulate.render import LenstronomyRenderer
from pipeline.simulate.scenes import Scene

HST = "tests/data/real/hst"


def _stamp(n=81, sigma=4.0, neighbour=True, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    img = 100 * np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    if neighbour:
        img += 80 * np.exp(-((xx - 28) ** 2 + (yy + 25) ** 2) / (2 * 2.0**2))
    return img + rng.normal(0, 1, img.shape)


def test_a_stamp_keeps_the_central_galaxy_only_centred_and_normalised():
    s = clean_stamp(_stamp(), "synthetic")
    assert s.image.min() >= 0 and s.image.sum() == pytest.approx(1)
    c = (np.array(s.image.shape) - 1) / 2
    yy, xx = np.indices(s.image.shape)
    assert (s.image * yy).sum() == pytest.approx(c[0], abs=0.6)
    assert (s.image * xx).sum() == pytest.approx(c[1], abs=0.6)
    # the neighbour (28, -25 px away) is gone: the stamp is smaller than the separation
    assert max(s.image.shape) < 2 * 28
    # half-light radius of a Gaussian: sigma sqrt(2 ln 2)
    assert s.r_half == pytest.approx(4.0 * math.sqrt(2 * math.log(2)), rel=0.15)


def test_a_stamp_of_noise_is_refused_by_name():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="noise-only: (no galaxy|the central galaxy covers .* too small)"):
        clean_stamp(rng.normal(0, 1, (60, 60)), "noise-only")


def test_hst_fixtures_give_stamps_and_a_reason_for_what_they_cannot():
    stamps, skipped = read_source_stamps(HST)
    assert len(stamps) == 4  # three AEGIS galaxies and the COSMOS field's central galaxy
    assert [s["source"] for s in skipped] == ["AEGIS_F814w_catalog.fits[-1]"]
    assert "no image HDU" in skipped[0]["reason"]


def test_a_real_source_has_the_priors_flux_and_size_and_lensing_magnifies_it():
    preset = get_preset("hst")
    priors = default_priors("hst").replace(r_eff_source=(0.3, 0.3))
    band = preset.bands[0]
    stamp = clean_stamp(_stamp(neighbour=False), "gauss")
    rng = np.random.default_rng(3)
    light, info = real_source(rng, preset, priors, 23.0, (0.0, 0.0), [stamp])
    assert info["r_eff_source"] == 0.3 and light[0].profile == "INTERPOL"
    # a tiny PSF-free-ish render: the source alone, then behind a lens
    kernel = np.zeros((5, 5))
    kernel[2, 2] = 1
    alone = LenstronomyRenderer(preset).render(Scene("galaxy", source=light, psf=[kernel])).arcs[0]
    assert alone.sum() == pytest.approx(band.mag_to_cps(23.0), rel=0.03)
    yy, xx = (np.indices(alone.shape) - (alone.shape[0] - 1) / 2) * band.pixel_scale
    r = np.hypot(xx, yy).ravel()
    order = np.argsort(r)
    cum = np.cumsum(alone.ravel()[order])
    r_half = r[order][np.searchsorted(cum, cum[-1] / 2)]
    assert r_half == pytest.approx(0.3, abs=1.5 * band.pixel_scale)
    lens = [("SIS", {"theta_E": 1.0, "center_x": 0.0, "center_y": 0.0})]
    lensed = LenstronomyRenderer(preset).render(
        Scene("lens", lens=lens, source=light, psf=[kernel])).arcs[0]
    assert lensed.sum() > 3 * alone.sum()  # a source on the caustic's centre: an Einstein ring


def test_simulate_with_sources_on_ray(ray_local, tmp_path):
    from pipeline.io import read_fits_file
    from pipeline.simulate import simulate

    m = simulate("euclid-vis", "lens", n=12, seed=5, out=tmp_path, shard_size=12,
                 split_fractions=(1.0, 0.0, 0.0), matched=True, sources=[HST], progress=False)
    assert len(m["sources"]["stamps"]) == 4 and len(m["sources"]["skipped"]) == 1
    assert json.loads((tmp_path / "manifest.json").read_text())["sources"] == m["sources"]
    rows = read_fits_file(str(tmp_path / "train/shard-00000.fits"))
    lens = rows["is_lens"] == 1
    assert lens.any() and set(rows["source_stamp"][lens]) <= {0, 1, 2, 3}
    assert (rows["source_stamp"][~lens & (rows["kind"] == "galaxy")] == -1).all()


def test_sources_are_refused_where_they_do_not_apply():
    from pipeline.simulate.generate import make_config
    from pipeline.simulate.instruments import ConfigError

    stamp = SourceStamp(np.ones((9, 9)) / 81, 2.0, "flat")
    with pytest.raises(ConfigError, match="lens task"):
        make_config("euclid-vis", "substructure", 10, 0, sources=[stamp])
    with pytest.raises(ConfigError, match="lenstronomy"):
        make_config("euclid-vis", "lens", 10, 0, backend="caustics", sources=[stamp])
