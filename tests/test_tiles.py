"""Cutting cutouts from survey tiles: synthetic astropy tiles (rotated WCS, overlaps, bands on one
grid and on another, a compressed tile, a NaN region, a truncated tile) with sources at known
RA/Dec, the real Euclid Q1 file used as a small tile, and the same through Ray.

Pure tests call ``plan_tiles``/``cut_piece`` (no Ray); Ray tests use the session ``ray_local``.
Astropy's own ``Cutout2D(data, SkyCoord, size, wcs=...)`` on the whole tile is the oracle for
the pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import Table
from astropy.wcs import WCS

from pipeline.io import CutoutReadError, read_tiles
from pipeline.io.sources import load_catalog
from pipeline.io.tiles import cut_piece, find_tiles, plan_tiles, to_block

SIZE = 16
N = 160  # tile side, px
SCALE = 0.2 / 3600  # deg/px
ROT = 30.0  # deg
EUCLID = "real/euclid/EUCLJ174517.55+655612.5.fits"


def _wcs(ra, dec, n=N, scale=SCALE, rot=ROT, crpix=None) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = crpix or [n / 2 + 0.5, n / 2 + 0.5]
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    w.wcs.cd = scale * np.array([[-c, s], [s, c]])
    w.wcs.radesys = "ICRS"
    return w


def _blob_image(w, n, positions, seed) -> np.ndarray:
    """Smooth noise (distinct pixel values) plus Gaussian sources at the given (ra, dec)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.01, (n, n)).astype(np.float32)
    yy, xx = np.mgrid[:n, :n]
    for ra, dec in positions:
        x, y = w.world_to_pixel(SkyCoord(ra, dec, unit="deg")) if np.isfinite(ra) else (-1, -1)
        if not (0 <= x < n and 0 <= y < n):
            continue
        img += 50 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    return img.astype(np.float32)


def _write(path, data, w, compressed=False, **keys):
    header = w.to_header()
    for k, v in keys.items():
        header[k] = v
    if compressed:
        hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data, header, compression_type="GZIP_2",
                                                     quantize_level=0.0, tile_shape=(8, N))]
    else:
        hdus = [fits.PrimaryHDU(data, header)]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Tiles A and B (overlapping, rotated), each with VIS and NIR_Y on its own grid; NIR_H of
    tile A on a 3x coarser grid; compressed tile C; tile D with a NaN region; truncated tile E.
    The catalogue names every source's expected fate."""
    d = tmp_path_factory.mktemp("tiles")
    wa = _wcs(150.0, 2.0)
    centre_b = wa.pixel_to_world(N / 2 - 0.5 + 90.37, N / 2 - 0.5 + 0.29)  # A's grid + (90.37, 0.29)
    wb = _wcs(centre_b.ra.deg, centre_b.dec.deg)
    wc, wd, we = _wcs(150.2, 2.0), _wcs(150.4, 2.0), _wcs(150.6, 2.0)
    rng = np.random.default_rng(0)

    def sky(w, x, y):
        s = w.pixel_to_world(x, y)
        return float(s.ra.deg), float(s.dec.deg)

    rows = []  # (id, ra, dec, expected)
    # Isolated sources at sub-pixel positions well inside tile A (not in the overlap with B).
    for i, (x, y) in enumerate([(30.3, 40.8), (50.6, 110.2), (40.5, 70.5), (25.9, 130.1)]):
        rows.append((f"a{i}", *sky(wa, x, y), "A"))
    # In the overlap (A's columns 90-159), 19.5 px from A's edge and 49.6 px from B's: goes to B.
    rows.append(("ab0", *sky(wa, 140.0, 80.3), "B"))
    # Near A's edge: 3 of 16 window columns off the tile (18.8%: an error), 1 column (6.2%: fine).
    rows.append(("edge_bad", *sky(wa, 5.0, 40.0), "edge"))
    rows.append(("edge_ok", *sky(wa, 7.0, 20.0), "A"))
    rows.append(("c0", *sky(wc, 60.4, 70.2), "C"))
    rows.append(("c1", *sky(wc, 100.0, 20.6), "C"))
    rows.append(("d_nan", *sky(wd, 40.0, 40.0), "nan"))
    rows.append(("d_ok", *sky(wd, 120.0, 120.0), "D"))
    rows.append(("e0", *sky(we, 80.0, 140.0), "truncated"))
    rows.append(("far", 10.0, -30.0, "outside"))
    rows.append(("nopos", float("nan"), 2.0, "nopos"))
    ids, ra, dec, fate = map(list, zip(*rows, strict=True))

    pos = list(zip(ra, dec, strict=True))
    tiles = {}
    for name, w, seed in (("A", wa, 1), ("B", wb, 2), ("C", wc, 3), ("D", wd, 4), ("E", we, 5)):
        for band, offset in (("VIS", 0.0), ("NIR_Y", 1000.0)):
            img = _blob_image(w, N, pos, seed) + offset
            if name == "D":
                img[30:50, 30:50] = np.nan
            tiles[name, band] = (img, w)
            _write(d / f"{name}_{band}.fits", img, w, compressed=name == "C")
    coarse = _wcs(150.0, 2.0, n=N // 3, scale=3 * SCALE)
    tiles["A", "NIR_H"] = (rng.normal(size=(N // 3, N // 3)).astype(np.float32), coarse)
    _write(d / "A_NIR_H.fits", *tiles["A", "NIR_H"])
    for band in ("VIS", "NIR_Y"):  # header intact, pixels cut short
        raw = (d / f"E_{band}.fits").read_bytes()
        (d / f"E_{band}.fits").write_bytes(raw[: 2880 + 2880 * 4])
    cat = {"id": ids, "ra": ra, "dec": dec, "fate": fate,
           "mag": rng.uniform(18, 24, len(ids)), "flag": [i % 2 == 0 for i in range(len(ids))]}
    return d, tiles, cat


def _by_id(batch) -> dict[str, dict]:
    return {batch["id"][i]: {k: v[i] for k, v in batch.items()} for i in range(len(batch["id"]))}


def _cut_all(plan) -> dict[str, dict]:
    rows = {}
    for piece in plan.pieces():
        batch, extra = cut_piece(piece)
        for name in extra.column_names:
            batch[name] = np.asarray(extra.column(name).to_pylist(), dtype=object)
        rows.update(_by_id(batch))
    return rows


def _oracle(tile, ra, dec, size=SIZE):
    img, w = tile
    c = Cutout2D(img, SkyCoord(ra, dec, unit="deg"), (size, size), wcs=w, mode="partial",
                 fill_value=np.nan)
    return c.data, c


# ----------------------------------------------------------------------------- pure: the plan
def test_every_source_is_cut_from_its_tile_with_the_tiles_own_pixels(field):
    d, tiles, cat = field
    plan = plan_tiles(str(d / "[A-E]_{band}.fits"), cat, SIZE, ["VIS", "NIR_Y"])
    rows = _cut_all(plan)
    assert sorted(rows) == sorted(cat["id"])  # every catalogue row, once
    assert sorted(int(r["index"]) for r in rows.values()) == list(range(len(cat["id"])))
    for rid, ra, dec, fate in zip(cat["id"], cat["ra"], cat["dec"], cat["fate"], strict=True):
        row = rows[rid]
        assert (row["ra"], row["dec"]) == (ra, dec) or np.isnan(ra)
        if fate not in "ABCD":
            assert row["error"], rid
            continue
        assert row["error"] is None, (rid, row["error"])
        assert row["source"] == str(d / f"{fate}_VIS.fits")
        assert row["image"].shape == (2, SIZE, SIZE) and row["image"].dtype == np.float32
        for b, band in enumerate(("VIS", "NIR_Y")):
            want, _ = _oracle(tiles[fate, band], ra, dec)
            if rid == "edge_ok":  # 1 px off the tile: those pixels take the band median
                inside = np.isfinite(want)
                assert 0 < (~inside).sum() <= 0.1 * SIZE**2
                np.testing.assert_array_equal(row["image"][b][inside], want[inside])
                assert np.all(row["image"][b][~inside] == np.median(want[inside]))
            else:
                np.testing.assert_array_equal(row["image"][b], want)


def test_cutouts_are_centred_on_their_sources_to_a_tenth_of_a_pixel(field):
    d, tiles, cat = field
    rows = _cut_all(plan_tiles(str(d / "[A-E]_{band}.fits"), cat, SIZE, ["VIS"]))
    checked = 0
    for rid, ra, dec, fate in zip(cat["id"], cat["ra"], cat["dec"], cat["fate"], strict=True):
        if fate not in "ABC" or rid.startswith("edge"):
            continue
        img = rows[rid]["image"][0].astype(np.float64)
        img = np.clip(img - np.median(img), 0, None)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        cy, cx = (img * yy).sum() / img.sum(), (img * xx).sum() / img.sum()
        # Where the source must be: astropy's own pixel position, minus the window's start.
        _, cut = _oracle(tiles[fate, "VIS"], ra, dec)
        ex, ey = cut.input_position_cutout
        assert abs(cx - ex) < 0.1 and abs(cy - ey) < 0.1, (rid, cx, ex, cy, ey)
        # ... which is within half a pixel of the cutout's geometric centre.
        assert abs(ex - (SIZE - 1) / 2) <= 0.5 and abs(ey - (SIZE - 1) / 2) <= 0.5
        checked += 1
    assert checked >= 6


def test_error_rows_say_why_and_counts_add_up(field):
    d, tiles, cat = field
    plan = plan_tiles(str(d / "[A-E]_{band}.fits"), cat, SIZE, ["VIS", "NIR_Y"])
    rows = _cut_all(plan)
    fate = dict(zip(cat["id"], cat["fate"], strict=True))
    err = {rid: r["error"] for rid, r in rows.items() if r["error"]}
    assert set(err) == {rid for rid, f in fate.items() if f not in "ABCD"}
    assert "outside every VIS tile (5 tiles)" in err["far"]
    assert err["far"].startswith("catalog: ") and rows["far"]["source"] == "catalog"
    assert "no valid RA/Dec" in err["nopos"]
    assert "on the edge of the VIS tile: 18.8% of the 16x16 cutout lies outside it" in err["edge_bad"]
    assert "non-finite pixels" in err["d_nan"]
    assert err["e0"].startswith(str(d / "E_VIS.fits") + ": cannot read pixels")
    assert "truncated" in err["e0"]
    for rid in err:  # error rows never carry pixels
        assert not rows[rid]["image"].any()
    counts = plan.counts()
    assert sum(counts.values()) == len(cat["id"])
    assert counts["catalog"] == 2 and plan.units[-1] == "catalog"


def test_tile_errors_say_whether_another_try_may_work(field, tmp_path):
    """Every error row has a kind: the plan's reasons, bad pixels and a tile gone since the
    plan are permanent; a tile whose filesystem fails (an S3 endpoint gone) is transient, so a
    run leaves that tile unfinished and reads it again."""
    import shutil

    from _s3server import S3Server

    d, tiles, cat = field
    plan = plan_tiles(str(d / "[A-E]_{band}.fits"), cat, SIZE, ["VIS", "NIR_Y"])
    rows = _cut_all(plan)
    assert {r["error_kind"] for r in rows.values() if r["error"]} == {"permanent"}
    assert all(r["error_kind"] is None for r in rows.values() if not r["error"])

    local = tmp_path / "tiles"
    local.mkdir()
    shutil.copy(d / "A_VIS.fits", local / "A_VIS.fits")
    gone = plan_tiles(str(local / "A_VIS.fits"), cat, SIZE, ["VIS"])
    (local / "A_VIS.fits").unlink()
    cut = list(_cut_all(gone).values())
    opened = [r for r in cut if "cannot open" in (r["error"] or "")]
    assert opened and all(r["error"] for r in cut)  # no row is cut from a missing tile
    assert {r["error_kind"] for r in opened} == {"permanent"}
    n_tile_rows = len(opened)  # the rows the tile would have given
    with S3Server() as s3:
        shutil.copy(d / "A_VIS.fits", local / "A_VIS.fits")
        s3.upload(local, "tiles")
        # a filesystem object given (the URI may carry the endpoint instead: next test)
        remote = plan_tiles("s3://lensray-test/tiles/A_VIS.fits", cat, SIZE, ["VIS"],
                            filesystem=s3.filesystem())
        s3.stop()  # planned (headers read); now every open fails
        cut = list(_cut_all(remote).values())
    opened = [r for r in cut if "cannot open" in (r["error"] or "")]
    assert len(opened) == n_tile_rows and {r["error_kind"] for r in opened} == {"transient"}
    assert all("3 attempts" in r["error"] for r in opened)  # tried again before giving up


def test_an_endpoint_in_the_tiles_uri_holds_for_the_whole_plan(field):
    """``s3://b/[A-D]_{band}.fits?endpoint_override=...``: the listing, the bands the pattern
    names, the headers and every cut go to that endpoint (the listed names drop the query), and
    the rows are those of the same tiles read locally."""
    from _s3server import S3Server

    d, tiles, cat = field
    bands = ["VIS", "NIR_Y"]
    local = _cut_all(plan_tiles(str(d / "[A-D]_{band}.fits"), cat, SIZE, bands))
    with S3Server() as s3:
        s3.upload(d, "field")
        named = plan_tiles(s3.uri("field/[A-D]_{band}.fits"), cat, SIZE)
        plan = plan_tiles(s3.uri("field/[A-D]_{band}.fits"), cat, SIZE, bands)
        remote = _cut_all(plan)
    assert set(named.bands) == {"VIS", "NIR_Y", "NIR_H"}  # the pattern names them
    assert all(u.startswith("s3://lensray-test/field/") and "?" not in u
               for u in plan.units[:-1])
    assert remote.keys() == local.keys()
    for rid, row in local.items():
        want = row["error"] and row["error"].replace(f"{d}/", "s3://lensray-test/field/")
        assert remote[rid]["error"] == want, rid
        np.testing.assert_array_equal(remote[rid]["image"], row["image"])


def test_pieces_cover_every_row_once_in_whole_strips_where_they_fit(tmp_path):
    """Dense sources on one tile: pieces of at most max_rows, at least half that (but for each
    unit's last), and a strip split between two pieces only where it cannot fit whole."""
    n, side = 3000, 400
    w = _wcs(20.0, 10.0, n=side, rot=0.0)
    _write(tmp_path / "t_VIS.fits", np.zeros((side, side), np.float32), w)
    rng = np.random.default_rng(1)
    ra, dec = w.wcs_pix2world(rng.uniform(0, side - 1, n), rng.uniform(0, side - 1, n), 0)
    plan = plan_tiles(str(tmp_path / "t_VIS.fits"), {"ra": ra, "dec": dec}, SIZE, ["VIS"])
    pieces = plan.pieces(max_rows=400)
    rows = np.concatenate([p.rows for p in pieces])
    assert sorted(rows.tolist()) == list(range(n))
    sizes = [len(p) for p in pieces]
    assert max(sizes) <= 400 and min(sizes[:-1]) >= 200, sizes
    strips = [set(np.floor(np.maximum(p.y[:, 0], 0) / p.strip_rows).astype(int)) for p in pieces]
    split = [s for a, b in zip(strips, strips[1:], strict=False) for s in a & b]
    assert len(split) <= len(pieces) // 2, (split, sizes)
    assert [len(p) for p in plan.pieces(max_rows=1)] == [1] * n  # --shard-size 1 once looped


def test_catalogue_columns_come_through_with_their_types(field):
    d, _, cat = field
    plan = plan_tiles(str(d / "[A-E]_{band}.fits"), cat, SIZE, ["VIS"])
    rows = _cut_all(plan)
    for rid, mag, flag in zip(cat["id"], cat["mag"], cat["flag"], strict=True):
        assert rows[rid]["mag"] == mag and rows[rid]["flag"] == flag
    assert plan.catalog.extra.schema.field("flag").type == pa.bool_()
    # Every block has one schema, pieces without errors too (an all-null error is a string).
    blocks = [to_block(*cut_piece(p)) for p in plan.pieces(max_rows=1)]
    assert any(b.column("error").null_count == len(b) for b in blocks)
    assert len({b.schema for b in blocks}) == 1
    assert blocks[0].schema.field("error").type == pa.string()
    only = plan_tiles(str(d / "[A-E]_{band}.fits"), load_catalog(cat, columns=["mag"]), SIZE,
                      ["VIS"])
    assert only.catalog.extra.column_names == ["mag"]


def test_a_band_on_another_grid_is_an_error_naming_both_grids(field):
    d, _, cat = field
    plan = plan_tiles(str(d / "A_{band}.fits"), cat, SIZE, ["VIS", "NIR_H"])
    rows = _cut_all(plan)
    msg = rows["a0"]["error"]
    assert "band NIR_H" in msg and "another pixel grid" in msg and "0.2\" and 0.6\"" in msg


def test_overlap_goes_to_the_tile_where_the_source_is_farthest_from_the_edge(field):
    d, _, cat = field
    plan = plan_tiles([str(d / "A_VIS.fits"), str(d / "B_VIS.fits")], cat, SIZE, ["VIS"])
    rows = _cut_all(plan)
    assert rows["ab0"]["source"] == str(d / "B_VIS.fits")
    assert rows["a0"]["source"] == str(d / "A_VIS.fits")


def test_bands_from_filter_keywords_and_from_the_pattern(field, tmp_path):
    d, tiles, cat = field
    img, w = tiles["A", "VIS"]
    _write(tmp_path / "one.fits", img, w, FILTER="VIS")
    _write(tmp_path / "two.fits", tiles["A", "NIR_Y"][0], w, FILTER="NIR_Y")
    images, _, bands, skipped = find_tiles(str(tmp_path), None)
    assert bands == ("VIS", "NIR_Y") and not skipped
    # With bands asked, files of other bands are left out with a note.
    images, _, bands, skipped = find_tiles(str(tmp_path), ["NIR_Y"])
    assert [im.path for im in images] == [str(tmp_path / "two.fits")]
    assert skipped == [f"{tmp_path / 'one.fits'}: no HDU for band(s) NIR_Y"]
    # A {band} pattern without bands: band names may contain '_'.
    images, _, bands, _ = find_tiles(str(d / "A_{band}.fits"), None)
    assert sorted(bands) == ["NIR_H", "NIR_Y", "VIS"]
    with pytest.raises(ValueError, match="no tile image for band.*'G'"):
        find_tiles(str(tmp_path), ["G"])
    with pytest.raises(FileNotFoundError):
        find_tiles(str(d / "*_{band}.fits"), ["U"])


def test_compressed_tile_is_read_through_its_section_only(field, monkeypatch):
    """The compressed tile's rows decompress only the strips around the sources: the whole
    image is never asked for (CompImageHDU.data would decompress all of it)."""
    from astropy.io.fits import CompImageHDU

    d, tiles, cat = field

    def no_whole_tile(self):
        raise AssertionError("the whole tile was decompressed")

    monkeypatch.setattr(CompImageHDU, "data", property(no_whole_tile))
    rows = _cut_all(plan_tiles(str(d / "C_{band}.fits"), cat, SIZE, ["VIS"]))
    for rid in ("c0", "c1"):
        assert rows[rid]["error"] is None
        want, _ = _oracle(tiles["C", "VIS"], rows[rid]["ra"], rows[rid]["dec"])
        np.testing.assert_array_equal(rows[rid]["image"][0], want)


def test_tiles_and_catalogue_through_a_uri(field, tmp_path):
    """file:// URIs go through pyarrow's filesystem (as s3:// would): seekable section reads."""
    d, tiles, cat = field
    pq.write_table(pa.table({k: cat[k] for k in ("id", "ra", "dec")}), tmp_path / "c.parquet")
    plan = plan_tiles(f"file://{d}/A_{{band}}.fits", f"file://{tmp_path}/c.parquet", SIZE,
                      ["VIS"])
    rows = _cut_all(plan)
    assert rows["a0"]["source"] == f"file://{d}/A_VIS.fits" and rows["a0"]["error"] is None
    want, _ = _oracle(tiles["A", "VIS"], rows["a0"]["ra"], rows["a0"]["dec"])
    np.testing.assert_array_equal(rows["a0"]["image"][0], want)


# ----------------------------------------------------------------------------- catalogues
def test_catalogue_formats_and_column_names(field, tmp_path):
    _, _, cat = field
    table = pa.table({"OBJECT_ID": np.arange(len(cat["id"])) + 10**12,
                      "RIGHT_ASCENSION": cat["ra"], "DECLINATION": cat["dec"], "mag": cat["mag"]})
    pq.write_table(table, tmp_path / "c.parquet")
    table.to_pandas().to_csv(tmp_path / "c.csv", index=False)
    Table(table.to_pandas().to_dict("list")).write(tmp_path / "c.fits")
    for name in ("c.parquet", "c.csv", "c.fits"):
        loaded = load_catalog(str(tmp_path / name))
        assert loaded.ids[0] == str(10**12), name
        np.testing.assert_array_equal(loaded.ra, np.asarray(cat["ra"]))
        assert loaded.extra.column_names == ["mag"], name
    kept = load_catalog(table, columns=["OBJECT_ID", "mag"])
    assert kept.extra.column("OBJECT_ID").type == pa.int64()
    plain = load_catalog({"x": cat["ra"], "y": cat["dec"]}, ra_column="x", dec_column="y")
    assert plain.ids[3] == "catalog:3"
    with pytest.raises(ValueError, match="no RA column"):
        load_catalog({"a": [1.0]})
    with pytest.raises(ValueError, match="not unique"):
        load_catalog({"id": ["s", "s"], "ra": [1.0, 2.0], "dec": [0.0, 0.0]})
    with pytest.raises(ValueError, match=r"\['source'\] clash"):
        load_catalog({"ra": [1.0], "dec": [0.0], "source": ["x"]})
    with pytest.raises(FileNotFoundError):
        load_catalog(str(tmp_path / "missing.parquet"))


# ----------------------------------------------------------------------------- real data
def test_euclid_q1_file_as_a_small_tile(data_dir):
    """The real Euclid Q1 cutout (8 bands on one 100x100 grid, its own WCS) used as a tile:
    sources at its catalogue target and around it come out with the file's own pixels."""
    path = data_dir / EUCLID
    info = json.loads(path.with_suffix(".info.json").read_text())
    ra0, dec0 = float(info["target_ra"]), float(info["target_dec"])
    with fits.open(path) as h:
        vis, nir = h["VIS_FLUX"].data.astype(np.float32), h["NIR_H_FLUX"].data.astype(np.float32)
        w = WCS(h["VIS_FLUX"].header)
    offsets = [(0, 0), (-12.3, 7.7), (20.5, -20.5)]
    sky = [w.pixel_to_world(*(np.array(w.world_to_pixel(SkyCoord(ra0, dec0, unit="deg")))
                              + off)) for off in offsets]
    cat = {"id": [info["id_str"], "n1", "n2"], "ra": [s.ra.deg for s in sky],
           "dec": [s.dec.deg for s in sky]}
    plan = plan_tiles(str(path), cat, 32, ["VIS", "NIR_H"])
    rows = _cut_all(plan)
    for rid, ra, dec in zip(cat["id"], cat["ra"], cat["dec"], strict=True):
        assert rows[rid]["error"] is None, rows[rid]["error"]
        for b, img in enumerate((vis, nir)):
            want, _ = _oracle((img, w), ra, dec, 32)
            np.testing.assert_array_equal(rows[rid]["image"][b], want)
    # Without bands: every *_FLUX band of the file, in file order (Q1 layout).
    everything = plan_tiles(str(path), cat, 32)
    assert everything.bands == ("MEGACAM_U", "HSC_G", "MEGACAM_R", "VIS", "HSC_Z", "NIR_Y",
                                "NIR_J", "NIR_H")
    assert _cut_all(everything)[info["id_str"]]["image"].shape == (8, 32, 32)


# ----------------------------------------------------------------------------- through Ray
def test_read_tiles_on_ray_counts_add_up_and_strict_raises(ray_local, field, tmp_path):
    d, tiles, cat = field
    pq.write_table(pa.table(cat), tmp_path / "cat.parquet")
    ds = read_tiles(str(d / "[A-E]_{band}.fits"), str(tmp_path / "cat.parquet"), SIZE,
                    ["VIS", "NIR_Y"])
    rows = ds.take_all()
    assert len(rows) == len(cat["id"]) and sorted(r["id"] for r in rows) == sorted(cat["id"])
    assert set(ds.columns()) == {"id", "ra", "dec", "image", "source", "index", "error",
                                 "error_kind", "fate", "mag", "flag"}  # as read_cutouts' rows
    good = [r for r in rows if r["error"] is None]
    assert len(good) == sum(f in "ABCD" for f in cat["fate"])
    for r in good:
        assert r["fate"] == next(f for i, f in zip(cat["id"], cat["fate"], strict=True)
                                 if i == r["id"])
        want, _ = _oracle(tiles[r["fate"], "NIR_Y"], r["ra"], r["dec"])
        if r["id"] != "edge_ok":
            np.testing.assert_array_equal(r["image"][1], want)
    # The catalogue as a Ray Dataset; strict: the first error row raises, naming the reason.
    some = ray_local.data.from_items([{k: cat[k][i] for k in ("id", "ra", "dec")}
                                      for i in (0, cat["id"].index("far"))])
    with pytest.raises(CutoutReadError, match="^catalog: outside every VIS tile"):
        try:
            read_tiles(str(d / "[A-E]_{band}.fits"), some, SIZE, ["VIS"], strict=True).take_all()
        except CutoutReadError as exc:  # as Ray delivers it: the whole remote traceback
            raise exc.unwrapped() from None
