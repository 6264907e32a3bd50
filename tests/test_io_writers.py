"""Writers: cube shards (layout, provenance, validation, atomicity) and Parquet catalogues."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import pipeline
from pipeline.io import read_cutouts, read_fits_file, write_catalog, write_cube_shard


def _shard_inputs(n=4, b=2, size=8):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, b, size, size)).astype(np.float32)
    table = {"id": [f"c{i}" for i in range(n)], "is_lens": np.arange(n) % 2}
    return images, table


def test_quantised_cube_shard_stores_int16_steps_and_reads_back_floats(tmp_path):
    images, table = _shard_inputs()
    path = write_cube_shard(tmp_path / "q.fits", images * 100, table, ["VIS", "NIR_H"],
                            quantum=0.5)
    with fits.open(path, do_not_scale_image_data=True) as h:
        assert h["CUTOUTS"].header["BITPIX"] == 16 and h["CUTOUTS"].header["BSCALE"] == 0.5
    rows = read_fits_file(str(path))
    got = np.asarray(rows["image"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.round(images * 200) / 2, atol=1e-6)  # nearest 0.5 step
    with pytest.raises(ValueError, match="quantum"):
        write_cube_shard(tmp_path / "big.fits", images * 1e6, table, ["VIS", "NIR_H"], quantum=1.0)


def test_cube_shard_layout_and_provenance(tmp_path):
    images, table = _shard_inputs()
    path = write_cube_shard(
        tmp_path / "s.fits",
        images,
        table,
        ["VIS", "NIR_H"],
        clean=images + 1,
        header={"preset": "euclid-vis", "seed": 7, "priors": {"theta_e": [0.5, 2.0]}},
    )
    with fits.open(path) as h:
        assert [x.name for x in h] == ["PRIMARY", "CUTOUTS", "CATALOG", "CLEAN"]
        hdr = h[0].header
        assert hdr["LENSRAY"] == pipeline.__version__ and hdr["NCUTOUT"] == 4
        assert (hdr["NBANDS"], hdr["BAND1"], hdr["BAND2"]) == (2, "VIS", "NIR_H")
        assert hdr["PRESET"] == "euclid-vis" and hdr["SEED"] == 7
        assert hdr["PRIORS"] == '{"theta_e": [0.5, 2.0]}'  # long/structured keys: HIERARCH JSON
        np.testing.assert_array_equal(h["CUTOUTS"].data, images)
        np.testing.assert_array_equal(h["CLEAN"].data, images + 1)
        assert list(h["CATALOG"].data["is_lens"]) == [0, 1, 0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["s.fits"]  # no temporary file left


def test_cube_shard_validates_inputs_before_writing(tmp_path):
    images, table = _shard_inputs()
    bad = [
        (dict(images=images[0]), "must be \\(N, B, H, W\\)"),
        (dict(bands=["VIS"]), "1 band names"),
        (dict(table={"is_lens": table["is_lens"]}), "no 'id' column"),
        (dict(table={**table, "id": ["a", "a", "b", "c"]}), "not unique"),
        (dict(table={**table, "extra": [1, 2]}), "has 2 rows for 4 images"),
        (dict(table={**table, "name": ["é", "a", "b", "c"]}), "non-ASCII text"),
    ]
    for change, message in bad:
        kwargs = {"images": images, "table": table, "bands": ["VIS", "NIR_H"], **change}
        with pytest.raises(ValueError, match=message):
            write_cube_shard(tmp_path / "x.fits", **kwargs)
    assert not list(tmp_path.iterdir())
    write_cube_shard(tmp_path / "x.fits", images, table, ["VIS", "NIR_H"])
    with pytest.raises(FileExistsError, match="x.fits"):
        write_cube_shard(tmp_path / "x.fits", images, table, ["VIS", "NIR_H"])
    write_cube_shard(tmp_path / "x.fits", images * 2, table, ["VIS", "NIR_H"], overwrite=True)
    np.testing.assert_array_equal(read_fits_file(str(tmp_path / "x.fits"))["image"], images * 2)


def test_killed_writer_leaves_no_shard(tmp_path, monkeypatch):
    """A failure in the middle of writing (here: the disk write raising) leaves neither a half
    shard nor a temporary file, and an existing shard untouched."""
    images, table = _shard_inputs()
    path = write_cube_shard(tmp_path / "s.fits", images, table, ["VIS", "NIR_H"])
    before = path.read_bytes()

    def boom(self, fileobj, *a, **k):
        fileobj.write(b"SIMPLE  =                    T" + b" " * 100)  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    for target in ("s.fits", "new.fits"):
        with pytest.raises(KeyboardInterrupt):
            write_cube_shard(tmp_path / target, images, table, ["VIS", "NIR_H"], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.fits"]
    assert path.read_bytes() == before


def _catalog_table():
    return pa.table(
        {
            "id": ["a", "b", "c"],
            "ra": [1.0, 2.0, float("nan")],
            "source": ["f1.fits", "f1.fits", "bad.fits"],
            "index": [0, 1, -1],
            "error": [None, None, "bad.fits: truncated"],
            "p_lens": [0.9, 0.1, None],
        }
    )


def test_write_catalog_splits_good_and_error_rows(tmp_path):
    counts = write_catalog(_catalog_table(), tmp_path / "out")
    assert counts == {"rows": 3, "good": 2, "errors": 1}
    good = pq.read_table(tmp_path / "out" / "catalog")
    errors = pq.read_table(tmp_path / "out" / "errors")
    assert good["id"].to_pylist() == ["a", "b"] and errors["id"].to_pylist() == ["c"]
    assert set(good["lensray_version"].to_pylist()) == {pipeline.__version__}
    assert errors["error"].to_pylist() == ["bad.fits: truncated"]
    # overwrite (default) replaces a previous run instead of appending to it
    write_catalog(_catalog_table(), tmp_path / "out")
    assert pq.read_table(tmp_path / "out" / "catalog").num_rows == 2


def test_write_catalog_from_ray_drops_images(ray_local, tmp_path, data_dir):
    ds = read_cutouts(data_dir / "real", size=16)
    counts = write_catalog(ds, tmp_path / "cat")
    assert counts == {"rows": 9, "good": 8, "errors": 1}
    good = pq.read_table(tmp_path / "cat" / "catalog")
    errors = pq.read_table(tmp_path / "cat" / "errors")
    assert "image" not in good.column_names and "lensray_version" in good.column_names
    assert {"id", "ra", "dec", "source", "index", "error"} <= set(good.column_names)
    assert good.num_rows == 8 and errors.num_rows == 1
    assert "AEGIS_F814w_catalog.fits: no image HDU" in errors["error"][0].as_py()
