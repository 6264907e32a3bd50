"""Any survey's cutouts through the real cascade on a local Ray: files at several pixel scales
and band sets in one run (resampled rows, error rows saying what the model wants, counts that
add up), the survey chosen from band names, the README's own-data
example on the bundled real cutouts, and ``lensray evaluate --labels`` on the real fixtures and
on a simulated ground-gri set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _cascade import make_checkpoints
from _surveyfits import make_checkpoint, ring, write_cutout

from pipeline.io import schema as S
from pipeline.metrics import lens_metrics
from pipeline.models.checkpoint import has_pretrained
from pipeline.run import run_cascade

REAL = Path(__file__).parent / "data" / "real"


def _tables(out: Path):
    """(catalogue, errors) of a run as DataFrames (None for a directory with no file)."""
    return tuple(pq.read_table(out / d).to_pandas() if any((out / d).glob("*.parquet")) else None
                 for d in ("catalog", "errors"))


@pytest.fixture(scope="module")
def vis_ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("vis"))  # VIS, 0.1"/px, 32 px


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One folder of what users have: VIS cutouts at three pixel scales, a 3-band g,r,i file,
    a cutout too small to fill the model, one with no pixel scale, and a broken file."""
    d = tmp_path_factory.mktemp("mixed")
    scales = {"fine": (0.05, 96), "native": (0.1, 48), "coarse": (0.2, 30)}
    for name, (scale, n) in scales.items():
        write_cutout(d / f"{name}.fits", ring(1.2, scale, n), scale=scale, names=["VIS"])
    write_cutout(d / "gri.fits", ring(1.2, 0.2, 40, bands=3), scale=0.2, names=["g", "r", "i"])
    write_cutout(d / "tiny.fits", ring(0.3, 0.1, 12), scale=0.1)
    write_cutout(d / "noscale.fits", ring(1.2, 0.1, 48))
    (d / "broken.fits").write_bytes(b"SIMPLE  =   not a FITS file")
    return d, scales


def test_one_run_fits_every_file_to_the_model_or_says_why(ray_local, mixed, vis_ckpts, tmp_path):
    d, scales = mixed
    out = tmp_path / "out"
    summary = run_cascade([d], out, checkpoints=vis_ckpts, stages=["lens-detect", "substructure"],
                          threshold=0.0, progress=False, gallery=4)
    cat, err = _tables(out)
    assert summary["adds_up"] and summary["total"]["rows"] == 7 == len(cat) + len(err)
    assert sorted(Path(s).stem for s in cat["source"]) == sorted(scales)
    for _, row in cat.iterrows():
        scale = scales[Path(row["source"]).stem][0]
        assert row[S.PIXEL_SCALE] == pytest.approx(scale, rel=1e-6)
        assert row[S.RESAMPLE] == pytest.approx(scale / 0.1, rel=1e-6)
        assert row[S.SURVEY] == "euclid-vis" and np.isfinite(row["p_lens"])
        assert row["model_lens_detect"].startswith("lastro_cnn@")
        assert np.isfinite(row["p_vortex"])  # threshold 0: every row went on to substructure
    reasons = {Path(s).stem: e for s, e in zip(err["source"], err["error"], strict=True)}
    wants = 'lens-detect model (euclid-vis) wants bands VIS at 0.1"/px, 32x32 px'
    assert reasons["gri"] == f"{d / 'gri.fits'} (cutout 0): {wants}; file has 3 bands g,r,i"
    assert "less than 50% of its 32" in reasons["tiny"]
    assert "pixel scale unknown" in reasons["noscale"] and "--pixel-scale" in reasons["noscale"]
    assert "broken.fits" in reasons["broken"]
    assert summary["survey"]["name"] == "euclid-vis"  # VIS in 2 of the first 4 files, g,r,i in 1
    assert "2 of the first 4" in summary["survey"]["by"]
    assert summary["read"]["pixel_scale"] is None and summary["geometry"]["size"] == 32
    assert (out / "gallery.png").stat().st_size > 10_000
    options = json.loads((out / "_shards" / "_options.json").read_text())
    assert options["LensDetect.survey"] == "euclid-vis" and options["pixel_scale"] is None


def test_ground_gri_files_choose_their_survey_and_run_its_stages(ray_local, tmp_path, caplog):
    d = tmp_path / "gri"
    d.mkdir()
    for k, scale in enumerate((0.168, 0.2, 0.262)):  # HSC, KiDS, DECaLS pixels
        write_cutout(d / f"c{k}.fits", ring(1.5, scale, 48, bands=5, seed=k), scale=scale,
                     names=["HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"])
    ckpt = make_checkpoint(tmp_path / "ckpt", bands=["g", "r", "i"], pixel_scale=0.2, size=32)
    summary = run_cascade([d], tmp_path / "out", checkpoints={"lens-detect": ckpt},
                          progress=False, gallery=0)
    cat, err = _tables(tmp_path / "out")
    assert summary["survey"]["name"] == "ground-gri" and "3 of the first 3" in summary["survey"]["by"]
    expected = [s for s in ("denoise", "lens-detect", "substructure")
                if s == "lens-detect" or has_pretrained(s, "ground-gri")]
    assert [s["stage"] for s in summary["stages"]] == [
        {"denoise": "Denoise", "lens-detect": "LensDetect", "substructure": "Substructure"}[s]
        for s in expected]
    assert len(err) == 0 and len(cat) == 3 and set(cat[S.SURVEY]) == {"ground-gri"}
    assert sorted(cat[S.RESAMPLE]) == pytest.approx([0.84, 1.0, 1.31])
    assert set(cat[S.BAND_NAMES]) == {"HSC-G,HSC-R,HSC-I,HSC-Z,HSC-Y"}


@pytest.fixture(scope="module")
def readme_run(ray_local, tmp_path_factory):
    """The README's own-data example, as written: ``lensray run tests/data/real/ --out DIR``."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("readme") / "results"
    assert main(["run", str(REAL), "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_readme_example_runs_on_the_real_cutouts_without_flags(readme_run):
    summary = json.loads((readme_run / "summary.json").read_text())
    cat, err = _tables(readme_run)
    assert summary["adds_up"] and summary["total"]["rows"] == len(cat) + len(err) == 9
    assert summary["survey"]["name"] == "euclid-vis"
    scored = {i: (p, f) for i, p, f in zip(cat["id"], cat["p_lens"], cat[S.RESAMPLE], strict=True)}
    assert {"ERO_ID_37174:0", "EUCLJ174517.55+655612.5:1", "EUCLJ174752.17+660743.0:1",
            "Cut_HST_COSMOS:0"} == set(scored)
    assert scored["Cut_HST_COSMOS:0"][1] == pytest.approx(0.03 / 0.101, rel=1e-3)  # resampled
    reasons = dict(zip(err["id"], err["error"], strict=True))
    assert "file has 5 unnamed bands" in reasons["Cut_HSC:0"]
    assert all("pixel scale unknown" in reasons[f"AEGIS_F814w_images_01:{k}"] for k in range(3))


def test_evaluate_on_the_real_fixtures_with_a_label_folder(ray_local, tmp_path):
    from pipeline.cli import main

    labels = tmp_path / "labels"
    for sub, files in (("lens", ["euclid/ERO_ID_37174.fits", "euclid/EUCLJ174517.55+655612.5.fits",
                                 "euclid/EUCLJ174752.17+660743.0.fits"]),
                       ("nonlens", ["hst/Cut_HST_COSMOS.fits", "hsc/Cut_HSC.fits"])):
        (labels / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(REAL / f, labels / sub)
    out = tmp_path / "eval"
    assert main(["evaluate", "--labels", str(labels), "--out", str(out), "--no-progress",
                 "--stages", "lens-detect"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cat, _ = _tables(out)
    # the VIS model cannot take HSC's 5 unnamed bands: not scored, counted, with the reason
    assert metrics["counts"] == {"rows": 5, "scored": 4, "lens": 3, "nonlens": 1,
                                 "unlabelled": 0, "labelled_not_scored": 1}
    (miss,) = metrics["not_scored"]
    assert miss["id"] == "Cut_HSC:0" and "file has 5 unnamed bands" in miss["error"]
    y = np.array([0 if "COSMOS" in i else 1 for i in cat["id"]])
    expect = lens_metrics(y, cat["p_lens"].to_numpy(), 1e-3)
    assert metrics["all"]["auc"] == pytest.approx(expect["auc"])
    assert metrics["all"]["tpr0"] == pytest.approx(expect["tpr0"])
    assert metrics["lens_rate"] == 1e-3 and metrics["survey"]["name"] == "euclid-vis"
    assert (out / "roc.png").stat().st_size > 5_000 and (out / "mistakes.png").stat().st_size > 5_000


def test_evaluate_with_a_group_table_reuses_a_finished_run(readme_run, tmp_path):
    from pipeline.evaluate import evaluate_cutouts

    table = tmp_path / "labels.csv"
    table.write_text("source,label,group\n"
                     "ERO_ID_37174.fits,lens,euclid\nEUCLJ174517.55+655612.5,1,euclid\n"
                     "EUCLJ174752.17+660743.0:1,true,euclid\nCut_HST_COSMOS.fits,0,hst\n"
                     "AEGIS_F814w_images_01.fits,nonlens,hst\n")
    res = evaluate_cutouts([REAL], table, readme_run, lens_rate=0.01, progress=False)
    assert res["counts"]["scored"] == 4 and res["counts"]["labelled_not_scored"] == 3
    assert res["counts"]["unlabelled"] == 2  # Cut_HSC and the AEGIS catalogue table
    assert set(res["groups"]) == {"euclid", "hst"}
    assert res["groups"]["euclid"]["n_lens"] == 3 and "note" in res["groups"]["euclid"]
    assert res["all"]["n_lens"] == 3 and res["all"]["n_nonlens"] == 1
    assert res["all"]["lens_rate"] == 0.01
    with pytest.raises(ValueError, match="neither a lens"):
        table.write_text("source,label\nx.fits,maybe\n")
        evaluate_cutouts([REAL], table, readme_run, progress=False)


def test_evaluate_on_a_simulated_ground_gri_set(ray_local, tmp_path):
    import pandas as pd

    from pipeline.evaluate import evaluate_cutouts
    from pipeline.simulate import shard_paths, simulate

    data = tmp_path / "sim"
    simulate("ground-gri", "lens", 16, 5, data, split_fractions=(0.0, 0.0, 1.0), shard_size=8,
             progress=False)
    ckpt = make_checkpoint(tmp_path / "ckpt", bands=["g", "r", "i"], pixel_scale=0.2, size=32)
    out = tmp_path / "eval"
    own = evaluate_cutouts(shard_paths(data, "test"), None, out,
                           checkpoints={"lens-detect": ckpt}, progress=False)
    cat, _ = _tables(out)
    assert own["survey"]["name"] == "ground-gri" and own["counts"]["scored"] == 16
    assert own["all"]["auc"] == pytest.approx(lens_metrics(cat[S.IS_LENS], cat["p_lens"])["auc"])
    assert own["counts"]["lens"] == int(cat[S.IS_LENS].sum()) > 0 < own["counts"]["nonlens"]
    labels = tmp_path / "labels.parquet"  # the same truth as a table of row ids
    pd.DataFrame({"source": cat["id"], "label": cat[S.IS_LENS]}).to_parquet(labels)
    table = evaluate_cutouts(shard_paths(data, "test"), labels, out,
                             checkpoints={"lens-detect": ckpt}, progress=False)
    assert table["all"] == own["all"] and table["counts"] == own["counts"]
