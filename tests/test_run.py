"""The main job end to end on real FITS shards: catalogue, errors, summary, gallery; resume;
and a stage actor killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from _cascade import BANDS, SIZE, make_checkpoints, make_shards

from pipeline.io.catalog import shard_key
from pipeline.run import run_cascade

COUNTS = [30, 25, 20]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("field")
    paths = make_shards(d, COUNTS)
    (d / "broken.fits").write_bytes(b"SIMPLE  =   this is not a FITS file")
    return d, paths


def _run(inputs, out, ckpts, **kw):
    kw.setdefault("threshold", 0.6)
    return run_cascade(inputs, out, bands=BANDS, size=SIZE, checkpoints=ckpts, batch_size=16,
                       progress=False, **kw)


def _catalog(out):
    return pq.read_table(out / "catalog").to_pandas()


@pytest.fixture(scope="module")
def first_run(ray_local, field, ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    return out, _run([field[0]], out, ckpts, gallery=6)


def test_run_writes_catalogue_errors_summary_and_gallery(first_run, field):
    out, summary = first_run
    cat = _catalog(out)
    errors = pq.read_table(out / "errors").to_pandas()
    assert len(cat) == sum(COUNTS) and cat["id"].is_unique
    assert len(errors) == 1 and "broken.fits" in errors["error"][0]
    for col in ("id", "ra", "dec", "source", "index", "p_lens", "is_candidate", "p_no_sub",
                "p_cdm", "p_vortex", "log10_m_axion", "log10_m_axion_sigma", "sigma_sub",
                "sigma_sub_sigma", "model_denoise", "model_lens_detect", "model_substructure",
                "lensray_version"):
        assert col in cat.columns, col
    assert "image" not in cat.columns and cat["error"].isna().all()
    cand = cat["is_candidate"].to_numpy(bool)
    p = cat["p_lens"].to_numpy(float)
    np.testing.assert_array_equal(cand, p >= 0.6)
    assert 0 < cand.sum() < len(cat)
    assert np.isfinite(cat["p_cdm"].to_numpy(float)[cand]).all()
    assert np.isnan(cat["p_cdm"].to_numpy(float)[~cand]).all()
    # One catalogue file per input shard, named after it.
    for path in field[1]:
        assert (out / "catalog" / f"{shard_key(str(path))}.parquet").is_file()
    # The counts add up, in the summary and on disk.
    assert summary["adds_up"]
    assert summary["this_run"] == {"rows": sum(COUNTS) + 1, "good": sum(COUNTS), "errors": 1,
                                   "transient": 0, "permanent": 1,
                                   "candidates": int(cand.sum()), "ids_renamed": 0}
    assert summary["total"]["catalog_parquet_rows"] == sum(COUNTS)
    assert summary["inputs"] == {"files": 4, "skipped_finished": 0, "processed": 4, "empty": [],
                                 "unfinished": [],
                                 "stale": {"files": 0, "rows": 0, "sources": []}, "pruned": 0,
                                 "adopted": []}
    assert summary["throughput_rows_per_s"] > 0
    assert set(summary["models"]) == {"model_denoise", "model_lens_detect", "model_substructure"}
    assert json.loads((out / "summary.json").read_text())["this_run"] == summary["this_run"]
    png = (out / "gallery.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_skips_finished_shards_without_duplicates(first_run, field, ckpts, tmp_path):
    d, paths = field
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    # Pretend the run was cut while writing the second shard: its marker is missing.
    key = shard_key(str(paths[1]))
    (out / "_shards" / f"{key}.json").unlink()
    finished = out / "catalog" / f"{shard_key(str(paths[0]))}.parquet"
    mtime = finished.stat().st_mtime_ns
    summary = _run([d], out, ckpts, gallery=0)
    assert summary["inputs"]["skipped_finished"] == 3 and summary["inputs"]["processed"] == 1
    assert summary["this_run"]["rows"] == COUNTS[1]
    assert finished.stat().st_mtime_ns == mtime  # no work redone for finished shards
    cat = _catalog(out)
    assert len(cat) == sum(COUNTS) and cat["id"].is_unique
    assert summary["total"]["rows"] == sum(COUNTS) + 1 and summary["adds_up"]
    # A third run has nothing to do.
    again = _run([d], out, ckpts, gallery=0)
    assert again["inputs"]["processed"] == 0 and again["this_run"]["rows"] == 0


def test_rerun_with_other_options_is_refused(first_run, field, ckpts, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match="other options") as err:
        _run([field[0]], out, ckpts, threshold=0.9, gallery=0)  # first run: 0.6
    assert "0.9" in str(err.value) and "0.6" in str(err.value)
    with pytest.raises(ValueError, match="other options"):
        _run([field[0]], out, ckpts, gallery=0, precision="bf16")
    from pipeline.cli import main

    with pytest.raises(SystemExit, match="^lensray run: .* was written with other options"):
        main(["run", str(field[0]), "--out", str(out), "--no-progress", "--threshold", "0.9"])
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing was touched


def test_strict_run_stops_at_the_bad_file_with_a_one_line_reason(field, ckpts, tmp_path):
    from pipeline.io import CutoutReadError

    with pytest.raises(CutoutReadError) as err:
        _run([field[0]], tmp_path / "out", ckpts, stages=["lens-detect"], gallery=0, strict=True)
    message = str(err.value)
    assert message.startswith(str(field[0] / "broken.fits") + ": not a readable FITS file")
    assert "\n" not in message and "Traceback" not in message
    from pipeline.cli import main

    with pytest.raises(SystemExit, match=r"^lensray run: \S+/broken.fits: not a readable FITS"):
        main(["run", str(field[0]), "--out", str(tmp_path / "cli"), "--strict", "--no-progress",
              "--stages", "lens-detect", "--lens-detect-checkpoint", str(ckpts["lens-detect"]),
              "--bands", *BANDS, "--size", str(SIZE)])


def _actor_processes(stage: str) -> dict[int, str]:
    """pid -> process title of our own Ray Data actors of ``stage`` (descendants of this
    process only: other Ray instances on the machine are left alone)."""
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if f"MapBatches({stage})" in title:
            found[proc.pid] = title
    return found


def test_killing_a_stage_actor_mid_run_loses_no_row(ray_local, ckpts, tmp_path):
    counts = [40] * 6
    paths = make_shards(tmp_path / "field", counts, seed=50)
    out = tmp_path / "out"
    result: dict = {}

    def job():
        try:
            result["summary"] = _run(paths, out, ckpts, stages=["lens-detect"], gallery=0)
        except BaseException as e:  # surfaced below
            result["error"] = e

    thread = threading.Thread(target=job)
    thread.start()
    killed, restarted = None, False
    deadline = time.time() + 240
    while thread.is_alive() and time.time() < deadline:
        procs = _actor_processes("ReadChain")  # the fused actor that reads and detects
        if killed is None:
            # Kill the actor's process while it runs a batch (its title ends in ".submit").
            busy = [pid for pid, title in procs.items() if ".submit" in title]
            if busy:
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
        elif set(procs) - {killed}:
            restarted = True
        time.sleep(0.01)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert killed is not None, "the run finished before an actor could be killed"
    assert restarted, "Ray Data did not start a new actor after the kill"
    summary = result["summary"]
    cat = _catalog(out)
    expected = {f"s{i}-{j}" for i, n in enumerate(counts) for j in range(n)}
    assert len(cat) == len(expected) and set(cat["id"]) == expected  # every row exactly once
    assert np.isfinite(cat["p_lens"].to_numpy(float)).all()
    assert summary["adds_up"] and summary["this_run"]["rows"] == sum(counts)
