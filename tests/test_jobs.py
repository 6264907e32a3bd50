"""`ray job submit` of jobs/run.py against a real Ray cluster started for this test only.

The cluster gets its own ports and temp dir and runs in its own process group, which is what
the test stops afterwards (never `ray stop`: other Ray instances on the machine keep running).
The in-process ``ray_local`` fixture is not touched: everything here goes through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _cascade import BANDS, SIZE, make_checkpoints, make_shards

REPO = Path(__file__).resolve().parents[1]
JOBS = ["run.py", "cutout.py", "simulate.py", "train.py", "tune.py"]


@pytest.mark.parametrize("name", JOBS)
def test_job_entrypoints_exist_and_are_thin(name):
    path = REPO / "jobs" / name
    assert path.is_file()
    text = path.read_text()
    assert "from pipeline.cli import main" in text
    assert f'main(["{name[:-3]}", *sys.argv[1:]])' in text
    assert len(text.splitlines()) < 40  # the work lives in the package


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture
def ray_cluster():
    """A 2-CPU Ray head on free ports; yields the dashboard (job server) address."""
    names = ["port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
             "node-manager-port", "object-manager-port"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    temp_dir = Path("/tmp") / f"lrjob-{uuid.uuid4().hex[:8]}"  # short: socket paths are limited
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           "--disable-usage-stats", f"--temp-dir={temp_dir}",
           *(f"--{k}={v}" for k, v in ports.items())]
    log = open(temp_dir.with_suffix(".log"), "wb")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start failed: {temp_dir.with_suffix('.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        _stop_group(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.with_suffix(".log").unlink(missing_ok=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the cluster we started: its whole process group, nothing else."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _submit_and_succeed(address: str, cwd: Path, script_args: list[str]) -> None:
    """``ray job submit ... -- python SCRIPT ARGS`` on ``address``; the job must succeed (a
    failed submission shows the CLI's own output, not only the job's absence)."""
    job_id = f"lensray-test-{uuid.uuid4().hex[:8]}"
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
              "--submission-id", job_id, "--working-dir", str(REPO), "--", "python", *script_args]
    res = subprocess.run(submit, env=_env(), capture_output=True, text=True, timeout=400, cwd=cwd)
    said = f"exit {res.returncode}\n" + res.stdout[-3000:] + res.stderr[-3000:]
    try:
        with urllib.request.urlopen(f"{address}/api/jobs/{job_id}", timeout=30) as r:
            status = json.load(r)["status"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"job {job_id} not on the cluster ({exc}): {said}") from None
    assert status == "SUCCEEDED", said


def test_ray_job_submit_runs_the_cascade(ray_cluster, tmp_path):
    counts = [12, 9]
    shards = make_shards(tmp_path / "field", counts, seed=3)
    ckpts = make_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "out"
    _submit_and_succeed(ray_cluster, tmp_path, [
        "jobs/run.py", str(tmp_path / "field"), "--out", str(out),
        "--bands", *BANDS, "--size", str(SIZE), "--batch-size", "8", "--threshold", "0.5",
        "--stages", "lens-detect", "--lens-detect-checkpoint", str(ckpts["lens-detect"]),
        "--gallery", "4", "--no-progress",
    ])
    cat = pq.read_table(out / "catalog").to_pandas()
    assert len(cat) == sum(counts) and cat["id"].is_unique
    assert set(cat["source"]) == {str(p) for p in shards}
    assert cat["p_lens"].notna().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adds_up"] and summary["total"]["rows"] == sum(counts)
    assert (out / "gallery.png").is_file()


def test_ray_job_submit_cuts_tiles_into_shards(ray_cluster, tmp_path):
    """jobs/cutout.py on the cluster: a tile and a catalogue in, cube shards out."""
    import numpy as np
    import pyarrow as pa
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [10.0, 20.0], [50.5, 50.5]
    w.wcs.cd = np.diag([-1.0, 1.0]) * 0.1 / 3600
    (tmp_path / "tiles").mkdir()
    fits.PrimaryHDU(np.random.default_rng(1).normal(size=(100, 100)).astype(np.float32),
                    w.to_header()).writeto(tmp_path / "tiles" / "t_VIS.fits")
    ra, dec = w.wcs_pix2world([20.0, 50.0, 70.0, 500.0], [30.0, 50.0, 60.0, 50.0], 0)
    pq.write_table(pa.table({"id": ["a", "b", "c", "off"], "ra": ra, "dec": dec}),
                   tmp_path / "sources.parquet")
    out = tmp_path / "cubes"
    _submit_and_succeed(ray_cluster, tmp_path, [
        "jobs/cutout.py", "--tiles", str(tmp_path / "tiles" / "*_{band}.fits"),
        "--catalog", str(tmp_path / "sources.parquet"), "--bands", "VIS", "--size", "16",
        "--out", str(out), "--no-progress",
    ])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adds_up"] and summary["total"] == {"rows": 4, "good": 3, "errors": 1}
    (shard,) = (out / "shards").glob("*.fits")
    with fits.open(shard) as h:
        assert sorted(h["CATALOG"].data["id"]) == ["a", "b", "c"]
        assert h["CUTOUTS"].data.shape == (3, 1, 16, 16)
