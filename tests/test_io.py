"""Reading cutouts: every layout, the real survey files, bad input, Ray Data, many files.

Pure tests call ``decode_fits``/``read_fits_file`` (no Ray); Ray tests use the session
``ray_local`` fixture and the same files through ``read_cutouts``.
"""

from __future__ import annotations

import io
import os
import resource
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from ray.data.expressions import col

from pipeline.io import (
    CutoutReadError,
    ReadOptions,
    decode_fits,
    read_cutouts,
    read_fits_file,
    write_cube_shard,
)
from pipeline.io.files import file_stem
from pipeline.io.pixels import centre_crop_or_pad

EUCLID = "real/euclid/EUCLJ174517.55+655612.5.fits"
HSC = "real/hsc/Cut_HSC.fits"
AEGIS = "real/hst/AEGIS_F814w_images_01.fits"


def _write(path, hdus) -> str:
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def _rows(batch) -> list[dict]:
    n = len(batch["id"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


# ----------------------------------------------------------------------------- real survey files
def test_euclid_q1_vis_band_and_wcs_position(data_dir):
    path = str(data_dir / EUCLID)
    (row,) = _rows(read_fits_file(path, ReadOptions(bands=("VIS",))))
    assert row["error"] is None
    assert row["image"].shape == (1, 100, 100) and row["image"].dtype == np.float32
    assert row["index"] == 10 and row["id"] == "EUCLJ174517.55+655612.5:10"
    # the file's own target position (info.json: 266.3231377, 65.93682015), to 0.1"
    assert row["ra"] == pytest.approx(266.3231377, abs=3e-5)
    assert row["dec"] == pytest.approx(65.93682015, abs=3e-5)
    with fits.open(path) as h:
        np.testing.assert_array_equal(row["image"][0], h["VIS_FLUX"].data)
        nir_h = h["NIR_H_FLUX"].data
    # exact EXTNAME and case-insensitive names work too; several bands stack in the order asked
    (two,) = _rows(read_fits_file(path, ReadOptions(bands=("nir_h", "VIS_FLUX"))))
    assert two["image"].shape == (2, 100, 100)
    np.testing.assert_array_equal(two["image"][0], nir_h)
    np.testing.assert_array_equal(two["image"][1], row["image"][0])


def test_rows_carry_their_pixel_scale_and_band_names_when_asked(data_dir, tmp_path):
    real = data_dir / "real"
    read = lambda p, **kw: _rows(read_fits_file(str(p), ReadOptions(geometry=True, **kw)))  # noqa: E731
    (vis,) = read(data_dir / EUCLID, bands=("VIS", "NIR_H"))  # WCS of the VIS_FLUX extension
    assert vis["pixel_scale"] == pytest.approx(0.1, rel=1e-3) and vis["band_names"] == "VIS,NIR_H"
    (hsc,) = read(real / "hsc" / "Cut_HSC.fits")
    assert hsc["pixel_scale"] == pytest.approx(0.168, rel=1e-3) and hsc["band_names"] is None
    (hst,) = read(real / "hst" / "Cut_HST_COSMOS.fits")
    assert hst["pixel_scale"] == pytest.approx(0.03, rel=1e-3)
    assert all(np.isnan(r["pixel_scale"]) for r in read(real / "hst" / "AEGIS_F814w_images_01.fits"))
    # a cube shard: PIXSCALE and the selected BANDn names, the same for every row
    shard = write_cube_shard(tmp_path / "s.fits", np.ones((3, 2, 8, 8), np.float32),
                             {"id": np.array(["a", "b", "c"])}, ["g", "r"], header={"PIXSCALE": 0.2})
    rows = read(shard, bands=("r",))
    assert [(r["pixel_scale"], r["band_names"]) for r in rows] == [(0.2, "r")] * 3
    # without the option the rows keep the base schema (the catalogue's columns do not change)
    assert "pixel_scale" not in read_fits_file(str(shard))


def test_one_hasher_and_one_null_rule():
    import hashlib

    import pyarrow as pa

    from pipeline.io import schema
    from pipeline.io.files import sha256_file

    assert sha256_file(__file__) == hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    nan_err = {"id": np.array(["a", "b"]), "error": np.array([np.nan, np.nan])}
    assert schema.restore_nulls(nan_err)["error"].tolist() == [None, None]
    typed = schema.string_nulls(pa.table({"error": pa.nulls(2), "p": [1.0, 2.0]}))
    assert typed.schema.field("error").type == pa.string() and typed["p"].type == pa.float64()


def test_euclid_without_bands_reads_every_flux_band(data_dir):
    (row,) = _rows(read_fits_file(str(data_dir / EUCLID)))
    assert row["image"].shape == (8, 100, 100)  # 8 *_FLUX HDUs, not the PSF/RMS ones
    assert row["index"] == 1 and row["error"] is None


def test_euclid_missing_band_names_file_band_and_available(data_dir):
    path = str(data_dir / EUCLID)
    (row,) = _rows(read_fits_file(path, ReadOptions(bands=("VIS", "NIR_K"), size=32)))
    assert row["error"].startswith(path + ": ")
    assert "'NIR_K'" in row["error"] and "VIS_FLUX" in row["error"] and "NIR_H_FLUX" in row["error"]
    assert row["image"].shape == (2, 32, 32) and not row["image"].any()


def test_hsc_primary_cube_is_one_multiband_cutout(data_dir):
    path = str(data_dir / HSC)
    (row,) = _rows(read_fits_file(path))
    with fits.open(path) as h:
        cube, header = h[0].data, h[0].header
    assert row["image"].shape == (5, 50, 50) and row["error"] is None
    np.testing.assert_allclose(row["image"], cube.astype(np.float32))
    ra, dec = WCS(header).celestial.wcs_pix2world([[24.5, 24.5]], 0)[0]
    assert (row["ra"], row["dec"]) == pytest.approx((ra, dec), abs=1e-9)
    # planes without names cannot be picked by name
    (bad,) = _rows(read_fits_file(path, ReadOptions(bands=("g", "r"))))
    assert "5 planes without band names" in bad["error"]


def test_hst_aegis_one_row_per_image_hdu(data_dir):
    path = str(data_dir / AEGIS)
    rows = _rows(read_fits_file(path))
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["image"].shape for r in rows] == [(1, 46, 70), (1, 156, 142), (1, 50, 48)]
    assert [r["id"] for r in rows] == [f"AEGIS_F814w_images_01:{i}" for i in range(3)]
    assert all(r["error"] is None and np.isnan(r["ra"]) for r in rows)  # no WCS in this file


# ----------------------------------------------------------------------------- synthetic layouts
def test_layouts_single_extension_and_band_keywords(tmp_path):
    img = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    ext = _write(tmp_path / "ext.fits", [fits.PrimaryHDU(), fits.ImageHDU(img)])
    (row,) = _rows(read_fits_file(ext))
    assert row["index"] == 1 and row["image"].shape == (1, 12, 10)
    np.testing.assert_array_equal(row["image"][0], img)

    hdr = fits.Header({"BAND1": "g", "BAND2": "r", "BAND3": "i"})
    cube = np.stack([img, img + 1, img + 2])
    named = _write(tmp_path / "gri.fits", [fits.PrimaryHDU(cube, header=hdr)])
    (row,) = _rows(read_fits_file(named, ReadOptions(bands=("i", "g"))))
    np.testing.assert_array_equal(row["image"], cube[[2, 0]])

    # an unnamed single plane serves one requested band unless FILTER says otherwise
    single = _write(
        tmp_path / "f814w.fits", [fits.PrimaryHDU(img, fits.Header({"FILTER": "F814W"}))]
    )
    assert "FILTER='F814W'" in read_fits_file(single, ReadOptions(bands=("VIS",)))["error"][0]
    assert read_fits_file(single, ReadOptions(bands=("F814W",)))["error"][0] is None


def test_named_bands_of_different_shapes_is_an_error(tmp_path):
    path = _write(
        tmp_path / "mixed.fits",
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.ones((10, 10)), name="A_FLUX"),
            fits.ImageHDU(np.ones((12, 12)), name="B_FLUX"),
        ],
    )
    (row,) = _rows(read_fits_file(path))
    assert "different shapes" in row["error"] and "A_FLUX 10x10" in row["error"]


def test_radec_from_object_keywords_and_nan_when_unknown(tmp_path):
    img = np.ones((8, 8), np.float32)
    kw = _write(
        tmp_path / "kw.fits",
        [fits.PrimaryHDU(img, fits.Header({"RA_OBJ": 10.5, "DEC_OBJ": -3.25}))],
    )
    sexa = _write(
        tmp_path / "sexa.fits",
        [fits.PrimaryHDU(img, fits.Header({"RA": "01:00:00", "DEC": "-30:30:00"}))],
    )
    none = _write(tmp_path / "none.fits", [fits.PrimaryHDU(img)])
    assert read_fits_file(kw)["ra"][0] == 10.5 and read_fits_file(kw)["dec"][0] == -3.25
    assert read_fits_file(sexa)["ra"][0] == pytest.approx(15.0)
    assert read_fits_file(sexa)["dec"][0] == pytest.approx(-30.5)
    assert np.isnan(read_fits_file(none)["ra"][0]) and np.isnan(read_fits_file(none)["dec"][0])
    # a galactic WCS centred on l = b = 0 is the Galactic Centre, RA 266.405 Dec -28.936 (ICRS)
    gal = fits.Header(
        {
            "CTYPE1": "GLON-TAN",
            "CTYPE2": "GLAT-TAN",
            "CRVAL1": 0.0,
            "CRVAL2": 0.0,
            "CRPIX1": 4.5,
            "CRPIX2": 4.5,
            "CDELT1": -1e-4,
            "CDELT2": 1e-4,
        }
    )
    gc = read_fits_file(_write(tmp_path / "gal.fits", [fits.PrimaryHDU(img, gal)]))
    assert (gc["ra"][0], gc["dec"][0]) == pytest.approx((266.40499, -28.93617), abs=1e-4)


def test_compressed_files_gzip_and_tile_compressed(tmp_path):
    import gzip

    img = np.random.default_rng(2).normal(size=(20, 30)).astype(np.float32)
    raw = tmp_path / "a.fits"
    _write(raw, [fits.PrimaryHDU(img)])
    (tmp_path / "a.fits.gz").write_bytes(gzip.compress(raw.read_bytes()))
    (tmp_path / "b.bin").write_bytes(gzip.compress(raw.read_bytes()))  # gzip without the suffix
    comp = fits.CompImageHDU(img, compression_type="GZIP_1", quantize_level=0.0)
    _write(tmp_path / "c.fits.fz", [fits.PrimaryHDU(), comp])
    for name, index in (("a.fits.gz", 0), ("b.bin", 0), ("c.fits.fz", 1)):
        (row,) = _rows(read_fits_file(str(tmp_path / name)))
        assert row["error"] is None and row["index"] == index, name
        np.testing.assert_array_equal(row["image"][0], img)


# ----------------------------------------------------------------------------- size and pixels
@pytest.mark.parametrize("h, w, size", [(7, 7, 5), (8, 8, 5), (5, 5, 8), (6, 9, 7), (4, 4, 4)])
def test_centre_crop_or_pad_keeps_the_centre_pixel_and_never_resamples(h, w, size):
    img = np.zeros((1, h, w), np.float32)
    img[0, h // 2, w // 2] = 1.0
    out = centre_crop_or_pad(img, size, fill=np.float32(-1))
    assert out.shape == (1, size, size)
    assert out[0, size // 2, size // 2] == 1.0 and (out == 1.0).sum() == 1
    # every output pixel is an input pixel or the fill: nothing interpolated
    assert set(np.unique(out)) <= {-1.0, 0.0, 1.0}
    n_fill = size * size - min(size, h) * min(size, w)
    assert (out == -1).sum() == n_fill


def test_pad_uses_band_median_and_crop_of_pad_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(5.0, 1.0, (9, 9)).astype(np.float32)
    path = _write(tmp_path / "p.fits", [fits.PrimaryHDU(img)])
    padded = read_fits_file(path, ReadOptions(size=15))["image"][0, 0]
    assert padded[0, 0] == pytest.approx(np.median(img))
    np.testing.assert_array_equal(centre_crop_or_pad(padded[None], 9)[0], img)


def test_nonfinite_policy_replace_few_reject_many(tmp_path):
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    few, many = img.copy(), img.copy()
    few[0, :3] = np.nan  # 3 %
    many[:3] = np.inf  # 30 %
    p_few = _write(tmp_path / "few.fits", [fits.PrimaryHDU(few)])
    p_many = _write(tmp_path / "many.fits", [fits.PrimaryHDU(many)])
    (good,) = _rows(read_fits_file(p_few))
    assert good["error"] is None and np.isfinite(good["image"]).all()
    assert good["image"][0, 0, 0] == pytest.approx(np.nanmedian(few))
    (bad,) = _rows(read_fits_file(p_many))
    assert bad["error"].startswith(p_many + ": ") and "30.0% non-finite" in bad["error"]
    assert read_fits_file(p_many, ReadOptions(max_nonfinite=0.5))["error"][0] is None


def test_options_fail_before_any_work():
    with pytest.raises(ValueError, match="size"):
        ReadOptions(size=0)
    with pytest.raises(ValueError, match="duplicates"):
        ReadOptions(bands=("VIS", "vis"))
    with pytest.raises(ValueError, match="max_nonfinite"):
        ReadOptions(max_nonfinite=2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_cutouts("/nowhere/at/all.fits")


def test_file_stem():
    assert file_stem("s3://b/x/EUCLJ1.5+6.fits.gz") == "EUCLJ1.5+6"
    assert file_stem("/a/b/c.FIT") == "c" and file_stem("notes.txt") == "notes"


# ----------------------------------------------------------------------------- bad input
def make_bad_corpus(d) -> dict[str, str]:
    """Write one good file and every kind of bad file; returns {file name: expected reason}."""
    good = np.ones((16, 16), np.float32)
    _write(d / "good.fits", [fits.PrimaryHDU(good)])
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(np.ones((64, 64), np.float32))]).writeto(buf)
    (d / "truncated.fits").write_bytes(buf.getvalue()[:5000])
    (d / "not_fits.fits").write_text("id,ra,dec\n1,2,3\n")
    (d / "zero_bytes.fits").write_bytes(b"")
    _write(d / "euclid_like.fits", [fits.PrimaryHDU(), fits.ImageHDU(good, name="NIR_H_FLUX")])
    nan = good.copy()
    nan[:8] = np.nan
    _write(d / "nan.fits", [fits.PrimaryHDU(nan)])
    _write(d / "four_d.fits", [fits.PrimaryHDU(np.ones((2, 2, 8, 8), np.float32))])
    _write(d / "one_d.fits", [fits.PrimaryHDU(np.ones(8, np.float32))])
    _write(d / "empty_hdu.fits", [fits.PrimaryHDU()])
    zero = fits.Header(
        [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 0), ("NAXIS2", 0)]
    )
    (d / "zero_size.fits").write_bytes(zero.tostring().encode())  # legal FITS, no pixels
    return {
        "truncated.fits": "truncated",
        "not_fits.fits": "not a readable FITS file",
        "zero_bytes.fits": "not a readable FITS file",
        "euclid_like.fits": "band 'VIS' not found",
        "nan.fits": "non-finite",
        "four_d.fits": "4 dimensions",
        "one_d.fits": "1 dimensions",
        "empty_hdu.fits": "no image HDU with data",
        "zero_size.fits": "empty image HDU",
    }


def test_bad_files_become_error_rows_naming_the_file(tmp_path):
    expected = make_bad_corpus(tmp_path)
    opts = ReadOptions(bands=("VIS",), size=16)
    for name, reason in expected.items():
        path = str(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the reader must not leak astropy warnings either
            batch = read_fits_file(path, opts)
        (row,) = _rows(batch)
        assert row["error"] is not None and row["error"].startswith(f"{path}: "), name
        assert reason in row["error"], (name, row["error"])
        assert row["image"].shape == (1, 16, 16) and not row["image"].any()
        with pytest.raises(CutoutReadError, match=name.replace(".", r"\.")):
            read_fits_file(path, ReadOptions(bands=("VIS",), strict=True))
    (good,) = _rows(read_fits_file(str(tmp_path / "good.fits"), opts))
    assert good["error"] is None


def test_decode_fits_reads_bytes_from_memory(data_dir):
    data = (data_dir / HSC).read_bytes()
    batch = decode_fits(data, "mem://hsc", ReadOptions(size=32))
    assert batch["image"].shape == (1, 5, 32, 32) and batch["source"][0] == "mem://hsc"


# ----------------------------------------------------------------------------- on Ray
def test_ray_read_of_the_bundled_real_cutouts(ray_local, data_dir):
    rows = read_cutouts(data_dir / "real").take_all()
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 9 and sum(r["error"] is not None for r in rows) == 1
    assert "AEGIS_F814w_catalog.fits: no image HDU" in by_id["AEGIS_F814w_catalog:-1"]["error"]
    assert by_id["Cut_HSC:0"]["image"].shape == (5, 50, 50)
    assert by_id["AEGIS_F814w_images_01:1"]["image"].shape == (1, 156, 142)

    ds = read_cutouts([data_dir / "real/euclid/*.fits"], bands=["VIS"], size=64)
    batch = ds.take_batch(10, batch_format="numpy")
    assert batch["image"].shape == (3, 1, 64, 64) and batch["image"].dtype == np.float32
    euclid = dict(zip(batch["id"], zip(batch["ra"], batch["dec"], strict=True), strict=True))
    assert euclid["EUCLJ174517.55+655612.5:10"] == pytest.approx((266.3231, 65.9368), abs=1e-4)


def test_ray_bad_corpus_counts_add_up_and_strict_raises(ray_local, tmp_path):
    expected = make_bad_corpus(tmp_path)
    for size in (None, 16):  # with size=None error rows (no pixels) sit beside varying shapes
        rows = read_cutouts(tmp_path, bands=["VIS"], size=size).take_all()
        errors = {os.path.basename(r["source"]): r["error"] for r in rows if r["error"]}
        assert len(rows) == len(expected) + 1 and len(errors) == len(expected)
        for name, reason in expected.items():
            assert errors[name].startswith(str(tmp_path / name) + ": ") and reason in errors[name]
    with pytest.raises(CutoutReadError, match=r"\.fits: "):
        read_cutouts(tmp_path, bands=["VIS"], strict=True).materialize()


def test_ray_globs_and_explicit_non_fits_file(ray_local, tmp_path):
    img = np.ones((8, 8), np.float32)
    (tmp_path / "sub").mkdir()
    for p in ("a.fits", "b.fit", "sub/c.fits", "_hidden.fits"):
        _write(tmp_path / p, [fits.PrimaryHDU(img)])
    (tmp_path / "notes.txt").write_text("not an image")
    ids = lambda ds: sorted(r["id"] for r in ds.take_all())  # noqa: E731
    assert ids(read_cutouts(tmp_path)) == ["a:0", "b:0", "c:0"]  # recursive, skips _hidden
    assert ids(read_cutouts(str(tmp_path / "*.fits"))) == ["_hidden:0", "a:0"]
    assert ids(read_cutouts(str(tmp_path / "**" / "*.fits"))) == ["_hidden:0", "a:0", "c:0"]
    (row,) = read_cutouts(tmp_path / "notes.txt").take_all()  # asked for explicitly: error row
    assert "notes.txt: not a readable FITS file" in row["error"]
    # URIs go through pyarrow.fs and keep their scheme in `source`; *.gz is inflated on the way
    import gzip

    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "d.fits.gz").write_bytes(gzip.compress((tmp_path / "a.fits").read_bytes()))
    (row,) = read_cutouts(f"file://{tmp_path}/z").take_all()
    assert row["source"] == f"file://{tmp_path}/z/d.fits.gz" and row["error"] is None
    np.testing.assert_array_equal(row["image"][0], img)


def test_more_files_than_the_open_file_limit(ray_local, tmp_path):
    """Every file is really opened (serial core, a Ray read task, the whole Ray read) under a
    soft RLIMIT_NOFILE lower than the number of files: handles must be closed as we go."""
    import ray

    from pipeline.io import list_inputs
    from pipeline.io.reader import FitsDatasource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    @ray.remote
    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    limit = max(len(os.listdir("/proc/self/fd")), ray.get(open_fds.remote())) + 64
    n = int(1.5 * limit)
    img = np.ones((4, 4), np.float32)
    paths = [_write(tmp_path / f"t{i:05d}.fits", [fits.PrimaryHDU(img)]) for i in range(n)]

    @ray.remote
    def run_read_tasks(tasks, limit):
        old = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, old[1]))
        try:
            return sum(len(block) for task in tasks for block in task())
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, old)

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        assert sum(len(read_fits_file(p)["id"]) for p in paths) == n
        source = FitsDatasource(list_inputs(paths), ReadOptions())
        assert ray.get(run_read_tasks.remote(source.get_read_tasks(1), limit)) == n
        ds = read_cutouts(tmp_path)
        assert ds.filter(expr=col("error").is_null()).count() == n
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_cube_shard_round_trip_through_ray(ray_local, tmp_path):
    rng = np.random.default_rng(1)
    n, bands = 6, ["g", "r", "i"]
    shards = {}
    for k, catalog in enumerate(("hdu", "parquet")):
        images = rng.normal(size=(n, 3, 20, 20)).astype(np.float32)
        table = {
            "id": [f"s{k}-{i}" for i in range(n)],
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-90, 90, n),
            "is_lens": np.arange(n) % 2,
            "theta_e": rng.uniform(0.5, 2.0, n),
            "kind": ["cdm", "axion", "none", "cdm", "axion", "none"],
        }
        clean = images * 0.5
        write_cube_shard(
            tmp_path / f"shard{k}.fits",
            images,
            table,
            bands,
            clean=clean,
            header={"preset": "test", "seed": k},
            catalog=catalog,
        )
        shards[k] = images, table, clean
    assert (tmp_path / "shard1.parquet").exists()
    with fits.open(tmp_path / "shard1.fits") as h:
        assert "CATALOG" not in h and h[0].header["BAND2"] == "r" and h[0].header["NCUTOUT"] == n

    rows = read_cutouts(tmp_path, clean=True).take_all()
    assert len(rows) == 2 * n and all(r["error"] is None for r in rows)
    by_id = {r["id"]: r for r in rows}
    for k, (images, table, clean) in shards.items():
        for i in range(n):
            r = by_id[table["id"][i]]
            assert r["index"] == i and r["source"] == str(tmp_path / f"shard{k}.fits")
            np.testing.assert_array_equal(r["image"], images[i])
            np.testing.assert_array_equal(r["clean"], clean[i])
            assert (r["ra"], r["dec"]) == (table["ra"][i], table["dec"][i])
            assert r["is_lens"] == table["is_lens"][i] and r["kind"] == table["kind"][i]
            assert r["theta_e"] == table["theta_e"][i]

    # band selection by the shard's BANDn names, and the ids/labels stay with their pixels
    (row,) = (
        read_cutouts(tmp_path / "shard0.fits", bands=["i"], size=10)
        .filter(expr=col("id") == "s0-3")
        .take_all()
    )
    np.testing.assert_array_equal(row["image"], centre_crop_or_pad(shards[0][0][3, [2]], 10))


def test_lensray_read_cli_prints_table_and_counts(ray_local, data_dir, capsys):
    from pipeline.cli import main

    assert main(["read", str(data_dir / "real"), "--no-progress", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "rows=9  good=8  errors=1" in out and "6 more rows" in out
    assert out.splitlines()[0].split()[:4] == ["id", "ra", "dec", "shape"]


def test_lensray_read_cli_rejects_bad_input_before_starting_ray(tmp_path):
    from pipeline.cli import main

    with pytest.raises(SystemExit, match="nothing.fits: no such file"):
        main(["read", str(tmp_path / "nothing.fits")])
    with pytest.raises(SystemExit, match="size must be a positive integer"):
        main(["read", str(tmp_path), "--size", "0"])


def test_inputs_are_listed_once_with_sizes_and_grouped_in_order(tmp_path):
    from pipeline.io.files import group_files, list_inputs

    sizes = [10, 10, 10, 5 << 20, 10, 10, 3 << 20, 2 << 20]  # bytes
    files = []
    for i, n in enumerate(sizes):
        (tmp_path / f"f{i}.fits").write_bytes(b"\0" * n)
        files.append(str(tmp_path / f"f{i}.fits"))
    inputs = list_inputs(tmp_path)
    assert inputs.files == tuple(files) and inputs.sizes == tuple(sizes)  # from the listing
    assert list_inputs(inputs) is inputs  # a listing is passed on, never made again
    groups = group_files(inputs, parts=1)
    assert [f for g in groups for f in g] == files  # every file once, in order
    assert [len(g) for g in groups] == [3, 1, 3, 1]  # up to 4 MiB per group; a bigger file alone
    assert len(group_files(inputs.subset(files[:3]), parts=3)) == 3  # 3 workers, 3 groups
    assert len(group_files(inputs.subset(files[:3]), parts=1)) == 1
    head = files[-1:] + files[:2]
    assert group_files(inputs.subset(head), parts=1) == [head]


def test_read_fits_file_through_a_pyarrow_filesystem_with_its_sidecar(tmp_path):
    """What the cascade's actors do for remote inputs: open the file and the cube shard's
    sibling Parquet catalogue through the filesystem the paths were listed with."""
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem

    images = np.random.default_rng(2).normal(size=(3, 1, 8, 8)).astype(np.float32)
    table = {"id": ["a", "b", "c"], "theta_e": [0.5, 1.0, 1.5]}
    write_cube_shard(tmp_path / "s.fits", images, table, ["VIS"], catalog="parquet")
    fs = SubTreeFileSystem(str(tmp_path), LocalFileSystem())  # not the local filesystem itself
    batch = read_fits_file("s.fits", filesystem=fs)
    assert list(batch["id"]) == ["a", "b", "c"] and list(batch["theta_e"]) == [0.5, 1.0, 1.5]
    np.testing.assert_array_equal(batch["image"], images)
    (gone,) = _rows(read_fits_file("gone.fits", filesystem=fs))
    assert gone["error"].startswith("gone.fits: cannot open")
