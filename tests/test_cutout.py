"""The tile jobs end to end: ``cut_tiles`` (lensray cutout) writes cube shards per unit and
resumes; ``run_cascade`` over a tile plan (lensray run --tiles) runs the cascade on the cut rows,
keeps the catalogue's ids and columns and resumes per tile; both through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cascade import make_checkpoints
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.cli import main
from pipeline.cutout import cut_tiles
from pipeline.io import load_catalog, plan_tiles, read_fits_file
from pipeline.io.catalog import shard_key
from pipeline.io.tiles import cut_piece
from pipeline.run import run_cascade

SIZE = 32  # the test checkpoints' size
SIDE = 200


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """Two VIS tiles side by side, 70 sources on them (a few near edges) and 2 off them."""
    d = tmp_path_factory.mktemp("sky")
    rng = np.random.default_rng(5)
    ras, decs = [], []
    for t, ra0 in enumerate((30.0, 30.02)):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [ra0, -5.0]
        w.wcs.crpix = [SIDE / 2 + 0.5] * 2
        w.wcs.cd = np.diag([-1.0, 1.0]) * 0.1 / 3600
        img = (100 + rng.normal(0, 5, (SIDE, SIDE))).astype(np.float32)
        fits.PrimaryHDU(img, w.to_header()).writeto(d / f"T{t}_VIS.fits")
        x, y = rng.uniform(0, SIDE - 1, 35), rng.uniform(0, SIDE - 1, 35)
        ra, dec = w.wcs_pix2world(x, y, 0)
        ras += list(ra)
        decs += list(dec)
    ras += [31.0, 29.0]
    decs += [-5.0, -5.0]
    n = len(ras)
    cat = pa.table({"OBJECT_ID": np.arange(n, dtype=np.int64) + 7_000_000,
                    "RA": ras, "DEC": decs, "mag": rng.uniform(18, 24, n),
                    "kind": [f"k{i % 3}" for i in range(n)]})
    pq.write_table(cat, d / "sources.parquet")
    return d, str(d / "T*_{band}.fits"), str(d / "sources.parquet"), cat


def test_cut_tiles_writes_shards_that_read_back_and_resumes(ray_local, sky, tmp_path):
    d, tiles, catalog, cat = sky
    out = tmp_path / "cubes"
    summary = cut_tiles(plan_tiles(tiles, catalog, SIZE, ["VIS"]), out, shard_size=20,
                        progress=False)
    n = cat.num_rows
    assert summary["adds_up"] and summary["total"]["rows"] == n
    assert summary["total"]["errors"] >= 2  # the two sources off every tile, and edges
    shards = sorted((out / "shards").glob("*.fits"))
    assert len(shards) == summary["units"]["total"] - 1  # the catalogue's unit: errors only
    # Shards read back with the ordinary reader: ids, catalogue columns, the cut pixels.
    plan = plan_tiles(tiles, catalog, SIZE, ["VIS"])
    want = {}
    for piece in plan.pieces():
        batch, _ = cut_piece(piece)
        want.update({i: im for i, im, e in zip(batch["id"], batch["image"], batch["error"],
                                                strict=True) if e is None})
    got = {}
    for path in shards:
        rows = read_fits_file(str(path))
        assert set(rows) >= {"id", "ra", "dec", "tile", "catalog_row", "mag", "kind"}
        for i, rid in enumerate(rows["id"]):
            got[rid] = rows["image"][i]
            row = int(rows["catalog_row"][i])
            assert rid == str(cat["OBJECT_ID"][row].as_py())
            assert rows["mag"][i] == cat["mag"][row].as_py()
            assert rows["kind"][i] == cat["kind"][row].as_py()
            assert rows["tile"][i].endswith("_VIS.fits")
    assert got.keys() == want.keys() and len(got) == summary["total"]["good"]
    for rid, im in got.items():
        np.testing.assert_array_equal(im, want[rid])
    errors = pq.read_table(out / "errors").to_pandas()
    assert len(errors) == summary["total"]["errors"]
    assert errors["error"].str.contains("outside every VIS tile").sum() == 2
    assert set(errors["kind"]) <= {"k0", "k1", "k2"}  # catalogue columns on error rows too

    # Resume: a finished run does nothing; a lost unit is redone alone, identically.
    again = cut_tiles(plan_tiles(tiles, catalog, SIZE, ["VIS"]), out, shard_size=20,
                      progress=False)
    assert again["units"]["processed"] == 0 and again["total"] == summary["total"]
    victim = shards[0]
    before = read_fits_file(str(victim))
    (out / "_shards" / f"{victim.stem}.json").unlink()
    victim.unlink()
    third = cut_tiles(plan_tiles(tiles, catalog, SIZE, ["VIS"]), out, shard_size=20,
                      progress=False)
    assert third["units"]["processed"] == 1 and third["total"] == summary["total"]
    after = read_fits_file(str(victim))
    np.testing.assert_array_equal(after["image"], before["image"])
    assert list(after["id"]) == list(before["id"])
    with pytest.raises(ValueError, match="other options"):
        cut_tiles(plan_tiles(tiles, catalog, SIZE + 2, ["VIS"]), out, shard_size=20,
                  progress=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def test_run_over_tiles_keeps_catalogue_ids_and_columns_and_resumes_per_tile(ray_local, sky,
                                                                            ckpts, tmp_path):
    d, tiles, catalog, cat = sky
    out = tmp_path / "run"
    plan = plan_tiles(tiles, load_catalog(catalog, columns=["OBJECT_ID", "mag"]), SIZE, ["VIS"])
    kw = dict(checkpoints=ckpts, batch_size=16, threshold=0.5, progress=False, gallery=4,
              stages=["lens-detect", "substructure"])
    summary = run_cascade(plan, out, **kw)
    good = pq.read_table(out / "catalog").to_pandas()
    errors = pq.read_table(out / "errors").to_pandas()
    n = cat.num_rows
    assert summary["adds_up"] and len(good) + len(errors) == n
    assert summary["inputs"]["files"] == 3  # two tiles and the catalogue (off-tile rows)
    assert sorted(good["index"].tolist() + errors["index"].tolist()) == list(range(n))
    ids = cat["OBJECT_ID"].to_pylist()
    mags = cat["mag"].to_pylist()
    for _, r in good.iterrows():
        assert r["id"] == str(ids[r["index"]]) and r["OBJECT_ID"] == ids[r["index"]]
        assert r["mag"] == mags[r["index"]]
    assert {"p_lens", "is_candidate", "p_cdm"} <= set(good.columns)
    assert "kind" not in good.columns
    assert (out / "gallery.png").stat().st_size > 0
    key = shard_key(str(d / "T1_VIS.fits"))
    assert (out / "catalog" / f"{key}.parquet").is_file()
    # Resume per tile: drop one tile's marker; only that tile is done again, same rows.
    (out / "_shards" / f"{key}.json").unlink()
    again = run_cascade(plan, out, **kw)
    assert again["inputs"]["skipped_finished"] == 2 and again["inputs"]["processed"] == 1
    redo = pq.read_table(out / "catalog").to_pandas().sort_values("id")
    np.testing.assert_allclose(redo["p_lens"].to_numpy(),
                               good.sort_values("id")["p_lens"].to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="other options"):
        run_cascade(plan_tiles(tiles, load_catalog(catalog, columns=["mag"]), SIZE, ["VIS"]),
                    out, **kw)


def test_run_over_tiles_whose_store_goes_away_leaves_them_unfinished(ray_local, sky, ckpts,
                                                                     tmp_path):
    """Tiles on S3 (moto): planned, then the endpoint stops; the run ends with the tiles' rows
    as transient errors and the tiles unfinished; with the endpoint back, a rerun reads just
    them again and every source is computed."""
    from _s3server import BUCKET, S3Server

    d, tiles, catalog, cat = sky
    kw = dict(checkpoints=ckpts, batch_size=16, progress=False, gallery=0,
              stages=["lens-detect"])
    with S3Server() as s3:
        fs = s3.filesystem()
        s3.upload(d, "sky")
        plan = plan_tiles(f"s3://{BUCKET}/sky/T*_{{band}}.fits", catalog, SIZE, ["VIS"],
                          filesystem=fs)
        s3.stop()
        first = run_cascade(plan, tmp_path / "run", **kw)
        tile_units = [u for u in plan.units if u.startswith("s3://")]
        assert sorted(first["inputs"]["unfinished"]) == sorted(tile_units) and first["adds_up"]
        # every source on a tile is a transient error (the rest: off every tile, on an edge)
        assert first["total"]["good"] == 0 and first["total"]["transient"] > 50
        s3.start()
        s3.upload(d, "sky")
        again = run_cascade(plan, tmp_path / "run", **kw)
    assert again["inputs"]["processed"] == 2 and again["inputs"]["unfinished"] == []
    assert again["total"]["transient"] == 0 and again["adds_up"]
    assert again["total"]["rows"] == cat.num_rows  # the tiles' rows replaced, none doubled
    assert again["total"]["good"] == first["total"]["transient"]  # each one now computed


def test_cli_cutout_and_run_with_tiles(ray_local, sky, ckpts, tmp_path, capsys):
    d, tiles, catalog, cat = sky
    assert main(["cutout", "--tiles", tiles, "--catalog", catalog, "--out", str(tmp_path / "c"),
                 "--size", str(SIZE), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1])["total"]["rows"] == cat.num_rows
    args = ["run", "--tiles", tiles, "--catalog", catalog, "--out", str(tmp_path / "r"),
            "--bands", "VIS", "--size", str(SIZE), "--stages", "lens-detect", "--gallery", "0",
            "--lens-detect-checkpoint", str(ckpts["lens-detect"]), "--no-progress"]
    assert main(args) == 0
    assert len(pq.read_table(tmp_path / "r" / "catalog")) + len(
        pq.read_table(tmp_path / "r" / "errors")) == cat.num_rows
    with pytest.raises(SystemExit, match="--tiles and --catalog go together"):
        main(["run", "--tiles", tiles, "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no RA column"):
        main(["cutout", "--tiles", tiles, "--catalog", catalog, "--out", str(tmp_path / "y"),
              "--ra-column", "nope"])
