"""The output directory is owned: foreign Parquet refused (or adopted with force), outputs of
inputs no longer given kept and counted (or pruned), ids unique with a stated rule, a fixed
errors/ schema; and the same directory on a real S3-compatible server (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cascade import BANDS, SIZE, make_checkpoints, make_shards
from _s3server import BUCKET, CREDENTIALS, S3Server

from pipeline.io.catalog import ERROR_COLUMNS
from pipeline.run import run_cascade


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _run(inputs, out, ckpts, **kw):
    kw.setdefault("gallery", 0)
    return run_cascade(inputs, out, bands=BANDS, size=SIZE, stages=["lens-detect"],
                       checkpoints=ckpts, batch_size=16, progress=False, **kw)


def _rows(out, sub="catalog"):
    return pq.read_table(out / sub).to_pandas()


def test_foreign_parquet_is_refused_adopted_with_force_and_stale_outputs_pruned_on_request(
        ray_local, ckpts, tmp_path):
    a, b = make_shards(tmp_path / "field", [12, 8], seed=1)
    out = tmp_path / "out"
    first = _run([a, b], out, ckpts)
    assert first["total"]["good"] == 20
    # every finished file has both Parquet files; errors/ has its fixed schema without errors
    errors = pq.read_table(out / "errors")
    assert errors.num_rows == 0 and errors.column_names == list(ERROR_COLUMNS)

    foreign = pa.table({"id": ["x1", "x2", "x3"], "p_lens": [0.1, 0.2, 0.3]})
    pq.write_table(foreign, out / "catalog" / "someone-else.parquet")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"catalog/someone-else\.parquet.*--force") as err:
        _run([a, b], out, ckpts)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.rglob("*")) == before  # refused before touching anything
    from pipeline.cli import main

    with pytest.raises(SystemExit, match=r"^lensray run: .*no record of") as exit_:
        main(["run", str(a), str(b), "--out", str(out), "--no-progress"])
    assert exit_.value.code != 0

    adopted = _run([a, b], out, ckpts, force=True)
    assert adopted["inputs"]["adopted"] == ["catalog/someone-else.parquet"]
    assert adopted["total"]["good"] == 23 and adopted["adds_up"]
    assert adopted["this_run"]["rows"] == 0  # nothing recomputed

    # b no longer given: its outputs (and the adopted file) stay, counted, until --prune
    kept = _run([a], out, ckpts)
    assert kept["inputs"]["stale"]["files"] == 2 and kept["inputs"]["stale"]["rows"] == 11
    assert kept["total"]["good"] == len(_rows(out)) == 23 and kept["adds_up"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == kept["total"]  # the summary describes the catalogue on disk

    pruned = _run([a], out, ckpts, prune=True)
    assert pruned["inputs"]["pruned"] == 2 and pruned["inputs"]["stale"]["files"] == 0
    cat = _rows(out)
    assert len(cat) == 12 == pruned["total"]["good"] and set(cat["source"]) == {str(a)}
    assert not (out / "catalog" / "someone-else.parquet").exists()


def test_duplicate_ids_get_a_suffix_and_are_counted(ray_local, ckpts, tmp_path):
    from astropy.io import fits

    # the same file name in two folders: the same ids "s0-0", "s0-1", ...
    one = make_shards(tmp_path / "one", [5])[0]
    two = make_shards(tmp_path / "two", [5])[0]
    # a cube whose own catalogue repeats an id
    cube = make_shards(tmp_path / "cube", [4], seed=7)[0]
    with fits.open(cube, mode="update") as hdul:
        hdul["CATALOG"].data["id"] = ["c", "c", "d", "c"]
    out = tmp_path / "out"
    summary = _run([one, two, cube], out, ckpts)
    cat = _rows(out)
    assert len(cat) == 14 and cat["id"].is_unique
    assert not cat.duplicated(["source", "index"]).any()  # the key
    by = {(s.split(os.sep)[-2], int(i)): x for s, i, x in zip(cat["source"], cat["index"],
                                                              cat["id"], strict=True)}
    assert by[("one", 0)] == "s0-0" and by[("two", 0)] == "s0-0~2"  # input order decides
    assert [by[("cube", i)] for i in range(4)] == ["c", "c~2", "d", "c~3"]
    assert summary["total"]["ids_renamed"] == 7
    # a later run over one more copy: ids already in the catalogue are not reused
    three = make_shards(tmp_path / "three", [5])[0]
    again = _run([one, two, cube, three], out, ckpts)
    new = _rows(out)
    assert new["id"].is_unique and again["this_run"]["ids_renamed"] == 5
    assert set(new[new["source"] == str(three)]["id"]) == {f"s0-{j}~3" for j in range(5)}


def _cli(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # --json: stdout is one JSON document


@pytest.mark.timeout(900)
def test_input_and_out_on_s3_resume_and_match_a_local_run(ray_local, ckpts, tmp_path):
    field = tmp_path / "field"
    make_shards(field, [10, 7, 9], seed=3)
    (field / "broken.fits").write_bytes(b"SIMPLE  = not FITS")
    env = {**os.environ, **CREDENTIALS,
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("AWS_ENDPOINT_URL", None)  # the endpoint comes from the URIs only
    common = ["--bands", ",".join(BANDS), "--size", str(SIZE), "--stages", "lens-detect",
              "--lens-detect-checkpoint", str(ckpts["lens-detect"]), "--gallery", "4",
              "--no-progress", "--json"]
    local = _run([field], tmp_path / "local", ckpts, gallery=4)
    with S3Server() as s3:
        s3.upload(field, "in")
        out = s3.uri("runs/one")
        first = _cli(["run", s3.uri("in/"), "--out", out, *common], env, tmp_path)
        assert first["inputs"]["processed"] == 4 and first["adds_up"]
        fs = s3.filesystem()
        root = f"{BUCKET}/runs/one"
        names = {i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(
            pa.fs.FileSelector(root, recursive=True))}
        assert {"summary.json", "gallery.png", "_options.json"} <= names
        assert not any(n.endswith(".tmp") for n in names)
        assert not os.path.exists(tmp_path / "s3:")  # nothing written locally
        again = _cli(["run", s3.uri("in/"), "--out", out, *common], env, tmp_path)
        assert again["inputs"]["skipped_finished"] == 4 and again["this_run"]["rows"] == 0
        assert "cascade" in again["timings_s"] and again["timings_s"]["cascade"] < 1
        cat = pq.read_table(f"{root}/catalog", filesystem=fs).to_pandas()
        errors = pq.read_table(f"{root}/errors", filesystem=fs)
    assert errors.column_names == list(ERROR_COLUMNS) and errors.num_rows == 1
    assert again["total"] == first["total"] == local["total"]
    mine = pq.read_table(tmp_path / "local" / "catalog").to_pandas()
    for frame in (cat, mine):
        frame["name"] = [s.rsplit("/", 1)[-1] for s in frame["source"]]
    cat, mine = (f.sort_values(["name", "index"], ignore_index=True) for f in (cat, mine))
    assert list(cat["id"]) == list(mine["id"]) and len(cat) == 26
    assert all(s.startswith("s3://lensray-test/in/") and "?" not in s for s in cat["source"])
    np.testing.assert_allclose(cat["p_lens"].to_numpy(float), mine["p_lens"].to_numpy(float),
                               rtol=1e-6)
