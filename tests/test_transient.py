"""Transient failures on a real S3-compatible server (moto, tests/_s3server.py): an endpoint that
goes away gives error rows of kind "transient" after the retries, the run still ends (exit 0)
and leaves those files unfinished; once the endpoint is back, a rerun recovers every cutout.
Remote opens time out instead of hanging."""

from __future__ import annotations

import socket
import time

import pyarrow.parquet as pq
import pytest
from _cascade import BANDS, SIZE, make_checkpoints, make_shards
from _s3server import S3Server

from pipeline.gallery import reread_cutouts, top_candidates
from pipeline.io import ReadOptions, read_fits_file
from pipeline.io.files import CONNECT_TIMEOUT_S, filesystem_from_uri, list_inputs
from pipeline.mine import mine
from pipeline.run import run_cascade

COUNTS = [4, 3, 2]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _run(inputs, out, ckpts):
    return run_cascade(inputs, out, bands=BANDS, size=SIZE, survey="euclid-vis",
                       stages=["lens-detect"], checkpoints=ckpts, batch_size=8, attempts=2,
                       progress=False, gallery=0)


def test_a_stopped_endpoint_leaves_files_unfinished_and_the_rerun_recovers(ray_local, ckpts,
                                                                           tmp_path):
    local = tmp_path / "field"
    make_shards(local, COUNTS)
    out = tmp_path / "out"
    with S3Server() as s3:
        s3.upload(local, "field")
        inputs = list_inputs(s3.uri("field/"))  # the endpoint in the URI's query
        assert [f.rsplit("/", 1)[1] for f in inputs.files] == [p.name for p in sorted(
            local.iterdir())] and inputs.files[0].startswith("s3://lensray-test/field/")

        s3.stop()  # the files were listed; now every open fails
        summary = _run(inputs, out, ckpts)
        total = summary["total"]
        assert (total["rows"], total["good"], total["transient"]) == (3, 0, 3)  # one per file
        assert summary["inputs"]["unfinished"] == list(inputs.files) and summary["adds_up"]
        errors = pq.read_table(out / "errors").to_pandas()
        assert set(errors["kind"]) == {"transient"}
        assert all("cannot open (" in e and "2 attempts" in e for e in errors["error"])

        s3.start()  # a new, empty server on the same port: upload again
        s3.upload(local, "field")
        summary = _run(s3.uri("field/"), out, ckpts)
        # the gallery re-reads sources whose names dropped the endpoint: through the run's
        # filesystem, not AWS
        rows = top_candidates(out / "catalog", 4)
        assert rows[0]["source"].startswith("s3://") and "?" not in rows[0]["source"]
        images = reread_cutouts(rows, summary["read"], filesystem=inputs.filesystem)
        assert all(im is not None and im.any() for im in images)
        # so does `lensray mine`, given the store options the run did not record
        mined = mine(out, tmp_path / "mined", top=4, val_fraction=0.0,
                     store_options=s3.uri("field/").split("?", 1)[1])
        assert mined["n"] == 4 and mined["skipped"] == [] and mined["adds_up"]
    assert summary["inputs"]["processed"] == 3 and summary["inputs"]["unfinished"] == []
    total = summary["total"]
    assert (total["rows"], total["good"], total["errors"]) == (sum(COUNTS), sum(COUNTS), 0)
    assert total["errors_parquet_rows"] == 0 and summary["adds_up"]
    cat = pq.read_table(out / "catalog").to_pandas()
    assert sorted(cat["id"]) == sorted(f"s{i}-{j}" for i, n in enumerate(COUNTS)
                                       for j in range(n))


def test_remote_opens_time_out_instead_of_hanging():
    fs, path = filesystem_from_uri("s3://b/x.fits?endpoint_override=127.0.0.1:9&scheme=http")
    assert fs.__reduce__()[1][0]["connect_timeout"] == CONNECT_TIMEOUT_S and path == "b/x.fits"
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        uri = (f"s3://b/x.fits?endpoint_override=127.0.0.1:{port}&scheme=http"
               "&connect_timeout=1&request_timeout=1")
        t0 = time.monotonic()
        batch = read_fits_file(uri, ReadOptions(attempts=1))
        assert time.monotonic() - t0 < 30
    assert batch["error_kind"][0] == "transient" and "cannot open (" in batch["error"][0]
    with pytest.raises(ValueError, match="s3:// URIs only"):
        filesystem_from_uri("gs://b/x.fits?request_timeout=1")
