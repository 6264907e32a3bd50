"""Survey geometry without Ray: pixel scales and band names from real FITS headers, rows fitted
to a checkpoint's geometry (a ring keeps its radius in arcsec whatever the input pixel scale),
error rows that say what the model wants, the survey chosen from band names, and stages of a
survey without weights."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from _surveyfits import make_checkpoint, ring, wcs_header, write_cutout
from astropy.io import fits

from pipeline.io import ReadOptions, list_inputs, read_fits_file
from pipeline.io import schema as S
from pipeline.models import fit_rows
from pipeline.models.checkpoint import has_pretrained
from pipeline.models.tasks import STAGES
from pipeline.surveys import get_survey, match_bands, survey_for_bands

GEOMETRY = ReadOptions(geometry=True)
MODEL = {"task": "lens-detect", "bands": ["VIS"], "pixel_scale": 0.1, "size": 48}
GRI = {"task": "lens-detect", "bands": ["g", "r", "i"], "pixel_scale": 0.2, "size": 32}


@pytest.mark.parametrize("scale", [0.03, 0.101, 0.2, 0.262])
def test_pixel_scale_from_wcs_cd_matrix_and_keyword(tmp_path, scale):
    img = ring(1.0, scale, 40)
    a = write_cutout(tmp_path / "wcs.fits", img, scale=scale)
    b = write_cutout(tmp_path / "kw.fits", img, scale=scale, how="keyword")
    c = tmp_path / "rotated.fits"
    fits.PrimaryHDU(img[0], wcs_header(scale, 40, rotation_deg=30)).writeto(c)
    for path in (a, b, c):
        (got,) = read_fits_file(str(path), GEOMETRY)[S.PIXEL_SCALE]
        assert got == pytest.approx(scale, rel=1e-6), path.name


def test_unknown_scale_is_nan_and_an_override_wins(tmp_path):
    path = str(write_cutout(tmp_path / "bare.fits", ring(1.0, 0.1, 40)))
    assert np.isnan(read_fits_file(path, GEOMETRY)[S.PIXEL_SCALE][0])
    assert read_fits_file(path, ReadOptions(pixel_scale=0.2))[S.PIXEL_SCALE][0] == 0.2
    with pytest.raises(ValueError, match="pixel_scale must be a positive"):
        ReadOptions(pixel_scale=-1)


def test_band_names_from_keywords_extensions_or_the_user(tmp_path):
    img3 = ring(1.0, 0.2, 32, bands=3)
    named = str(write_cutout(tmp_path / "named.fits", img3, scale=0.2, names=["HSC_G", "HSC_R", "HSC_I"]))
    unnamed = str(write_cutout(tmp_path / "unnamed.fits", img3, scale=0.2))
    ext = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(img3[k], wcs_header(0.1, 32), name=f"{b}_FLUX")
                                        for k, b in enumerate(["NIR_H", "VIS", "NIR_J"])]).writeto(ext)
    assert read_fits_file(named, GEOMETRY)[S.BAND_NAMES][0] == "HSC_G,HSC_R,HSC_I"
    assert read_fits_file(unnamed, GEOMETRY)[S.BAND_NAMES][0] is None
    assert read_fits_file(str(ext), GEOMETRY)[S.BAND_NAMES][0] == "NIR_H,VIS,NIR_J"
    given = ReadOptions(geometry=True, band_names=("g", "r", "i"))
    assert read_fits_file(unnamed, given)[S.BAND_NAMES][0] == "g,r,i"
    assert read_fits_file(named, given)[S.BAND_NAMES][0] == "HSC_G,HSC_R,HSC_I"  # the file's own
    (err,) = read_fits_file(unnamed, ReadOptions(geometry=True, band_names=("g", "r")))[S.ERROR]
    assert "unnamed.fits" in err and "3 unnamed planes" in err and "names 2 (g,r)" in err


def _radius_px(image: np.ndarray) -> float:
    """Radius (px) of the brightest ring about the image centre (azimuthal mean profile)."""
    img = np.nan_to_num(image.mean(0) - np.nanmedian(image), nan=0.0)
    n = img.shape[-1]
    r = np.hypot(*(np.mgrid[:n, :n] - (n - 1) / 2))
    bins = np.arange(0, n / 2, 0.5)
    which = np.digitize(r.ravel(), bins)
    prof = np.array([img.ravel()[which == k].mean() if (which == k).any() else -np.inf
                     for k in range(1, len(bins))])
    return float(bins[np.argmax(prof)] + 0.25)


@pytest.mark.parametrize(("scale", "n"), [(0.05, 128), (0.1, 64), (0.2, 40), (0.3, 28)])
def test_a_ring_keeps_its_radius_in_arcsec_whatever_the_pixel_scale(tmp_path, scale, n):
    path = write_cutout(tmp_path / "ring.fits", ring(1.6, scale, n), scale=scale)
    rows = read_fits_file(str(path), GEOMETRY)
    fit = fit_rows(rows, MODEL)
    assert fit.ok.all() and fit.images.shape == (1, 1, 48, 48)
    assert fit.factor[0] == pytest.approx(scale / 0.1)
    assert _radius_px(fit.images[0]) == pytest.approx(16, abs=1.0)  # 1.6" at the model's 0.1"/px
    # without resampling the ring would have 1.6 / scale px
    assert abs(_radius_px(ring(1.6, scale, n)) - 1.6 / scale) <= 1.0


def test_bands_are_picked_by_name_in_the_models_order(tmp_path):
    img = ring(1.0, 0.2, 32, bands=3)
    img[0] += 1000  # the plane named i
    path = write_cutout(tmp_path / "irg.fits", img, scale=0.2, names=["DECam-i", "DECam-r", "DECam-g"])
    fit = fit_rows(read_fits_file(str(path), GEOMETRY), GRI)
    assert fit.ok.all()
    assert fit.images[0, 2].mean() > 1000 > fit.images[0, 0].mean()  # i is the model's third


def test_rows_that_cannot_fit_are_error_rows_saying_what_the_model_wants(tmp_path):
    files = {
        "vis": write_cutout(tmp_path / "vis.fits", ring(1.0, 0.1, 64), scale=0.1, names=["VIS"]),
        "five": write_cutout(tmp_path / "five.fits", ring(1.0, 0.2, 64, bands=5), scale=0.2),
        "tiny": write_cutout(tmp_path / "tiny.fits", ring(0.5, 0.2, 8, bands=3), scale=0.2),
        "bare": write_cutout(tmp_path / "bare.fits", ring(1.0, 0.2, 64, bands=3)),
        "good": write_cutout(tmp_path / "good.fits", ring(1.0, 0.4, 40, bands=3), scale=0.4),
    }
    rows = [read_fits_file(str(p), GEOMETRY) for p in files.values()]
    batch = {k: np.concatenate([r[k] for r in rows]) if k != S.IMAGE else
             np.array([r[k][0] for r in rows] + [None], dtype=object)[:-1] for k in rows[0]}
    fit = fit_rows(batch, GRI, "ground-gri")
    errors = dict(zip(files, fit.errors, strict=True))
    wants = 'lens-detect model (ground-gri) wants bands g,r,i at 0.2"/px, 32x32 px'
    assert errors["vis"] == f"{files['vis']} (cutout 0): {wants}; file has 1 band VIS"
    assert errors["five"].endswith("file has 5 unnamed bands")
    assert "8x8 px at 0.2\"/px is 8x8 px at the model's scale, less than 50% of its 32" in errors["tiny"]
    assert "pixel scale unknown" in errors["bare"] and "--pixel-scale" in errors["bare"]
    assert errors["good"] is None and fit.factor[-1] == pytest.approx(2.0)
    assert np.isnan(fit.factor[:-1]).all()


def test_band_matching_and_the_survey_of_band_names():
    assert match_bands(["g", "r", "i"], ["HSC_I", "HSC_G", "HSC_R", "HSC_Z"], 4) == [1, 2, 0]
    assert match_bands(["VIS"], None, 1) == [0]  # one unnamed plane for a one-band model
    with pytest.raises(ValueError, match="ambiguous"):
        match_bands(["g"], ["SDSS_G", "DECam_g"], 2)
    assert survey_for_bands(["VIS"]).name == "euclid-vis"
    assert survey_for_bands("MEGACAM_U,HSC_G,MEGACAM_R,VIS".split(",")).name == "euclid-vis"
    assert survey_for_bands(["g", "r", "i", "z", "y"]).name == "ground-gri"
    assert survey_for_bands(["F160W"]).name == "hst"
    assert survey_for_bands(["NUV"]) is None and survey_for_bands(None) is None


def test_the_survey_is_chosen_from_band_names_else_the_default(tmp_path, caplog):
    from pipeline.run import choose_survey

    gri, bare = tmp_path / "gri", tmp_path / "bare"
    gri.mkdir(), bare.mkdir()
    for k in range(3):
        write_cutout(gri / f"{k}.fits", ring(1.0, 0.2, 32, bands=3), scale=0.2,
                     names=["g", "r", "i"])
        write_cutout(bare / f"{k}.fits", ring(1.0, 0.2, 32, bands=3), scale=0.2)
    assert choose_survey(list_inputs(gri))["name"] == "ground-gri"
    with caplog.at_level(logging.WARNING):
        chosen = choose_survey(list_inputs(bare))
    assert chosen["name"] == "euclid-vis" and "default" in chosen["by"] and "--survey" in chosen["by"]
    assert "(the default)" in caplog.text
    named = ReadOptions(geometry=True, band_names=("g", "r", "i"))  # --band-names g r i
    assert choose_survey(list_inputs(bare), named)["name"] == "ground-gri"


def test_stages_of_a_survey_without_weights(tmp_path, caplog):
    from pipeline.compose import Pipeline
    from pipeline.stages import LensDetect, build_stages

    missing = [s for s in STAGES if not has_pretrained(s, "hst")]
    if missing:  # named: an error naming the survey and the stage
        with pytest.raises(FileNotFoundError, match=f"survey 'hst' ships no {missing[0]} weights"):
            build_stages([missing[0]], survey="hst")
    if not any(has_pretrained(s, "hst") for s in STAGES):
        with pytest.raises(FileNotFoundError, match="survey 'hst' ships no weights yet"):
            build_stages(survey="hst")
    ckpt = make_checkpoint(tmp_path / "gri", bands=["g", "r", "i"], pixel_scale=0.2, size=32)
    with caplog.at_level(logging.WARNING, logger="pipeline.stages"):
        pipe = Pipeline.for_survey("ground-gri", checkpoints={"lens-detect": ckpt})
    shipped = [s for s in STAGES if has_pretrained(s, "ground-gri")] or ["lens-detect"]
    assert [s.task for s in pipe.stages] == [s for s in STAGES if s in {*shipped, "lens-detect"}]
    (detect,) = [s for s in pipe.stages if isinstance(s, LensDetect)]
    assert detect.geometry == {"bands": ["g", "r", "i"], "pixel_scale": 0.2, "size": 32}
    assert detect.survey == "ground-gri" == get_survey("ground-gri").name
    if len(pipe.stages) < len(STAGES):  # the stages left out are named in the log
        assert "survey ground-gri ships no" in caplog.text


def test_a_run_that_finished_no_file_binds_no_options(tmp_path):
    """A crashed or stopped run leaves its --out free: the options are recorded with the first
    finished file, and only then does a rerun with others get refused."""
    import pyarrow as pa

    from pipeline.io import CatalogStore

    src = str(tmp_path / "a.fits")
    crashed = CatalogStore(tmp_path / "out", [src])
    crashed.check_options({"survey": "euclid-vis", "threshold": 0.5})  # then the run died
    assert not (tmp_path / "out" / "_shards" / "_options.json").exists()
    rerun = CatalogStore(tmp_path / "out", [src])
    rerun.check_options({"survey": "ground-gri", "threshold": 0.5})  # other options: fine
    rerun.add(pa.table({S.ID: ["a:0"], S.SOURCE: [src], S.ERROR: pa.array([None], pa.string())}))
    rerun.close()
    assert json.loads((tmp_path / "out" / "_shards" / "_options.json").read_text())["survey"] == "ground-gri"
    with pytest.raises(ValueError, match="other options .*survey: 'ground-gri' then, 'hst' now"):
        CatalogStore(tmp_path / "out", [src]).check_options({"survey": "hst", "threshold": 0.5})
