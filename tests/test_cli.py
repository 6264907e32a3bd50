"""One CLI: one-line errors (exit 2 for usage, 1 for failures, a traceback only with -v), --json
stdout, defaults in --help, list options that leave INPUT alone; the embedded Ray leaves no
process behind when the driver is killed; the demo field always holds lenses; the docs'
Python snippet runs as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from _cascade import BANDS, SIZE, make_checkpoints, make_shards

from pipeline.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _lensray(*args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _no_nan(name: str):
    raise ValueError(f"{name} is not JSON")


def _one_line(stderr: str, prefix: str) -> str:
    """The last stderr line, which must be the problem's one line."""
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), stderr[-2000:]
    return last


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("field")
    make_shards(d, [6, 5])
    (d / "broken.fits").write_bytes(b"SIMPLE  = not a FITS file")
    return d


def test_usage_errors_are_one_line_with_exit_status_2(tmp_path):
    sim = _lensray("simulate", "--preset", "euclid", "--task", "lens", "--n", "4", "--out",
                   tmp_path / "s", cwd=tmp_path)
    assert sim.returncode == 2 and "Traceback" not in sim.stderr
    assert re.fullmatch(r"lensray simulate: --preset 'euclid': unknown \(known: .*euclid-vis.*",
                        sim.stderr.strip())
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{}")
    again = _lensray("simulate", "--preset", "euclid-vis", "--task", "lens", "--n", "4",
                     "--out", tmp_path / "s", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    bad = _lensray("run", "x.fits", "--out", "o", "--threshold", "high", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("lensray run: argument --threshold: invalid float value")
    spaced = _lensray("run", "--bands", "g", "r", "x.fits", "--out", "o", cwd=tmp_path)
    assert spaced.returncode == 2 and "--bands g,r,i" in spaced.stderr
    with pytest.raises(SystemExit) as err:
        main(["run", "--demo", "--demo-n", "3", "--out", str(tmp_path / "d")])
    assert err.value.code == 2 and str(err.value).startswith("lensray run: --demo-n must be")


def test_list_options_leave_input_alone_and_help_shows_defaults(capsys):
    args = build_parser().parse_args(["run", "--bands", "VIS", "a.fits", "--out", "o"])
    assert args.bands == ["VIS"] and args.inputs == ["a.fits"]
    args = build_parser().parse_args(["read", "--bands", "g,r", "--bands", "i", "d/"])
    assert args.bands == ["g", "r", "i"] and args.inputs == ["d/"]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("--threshold THRESHOLD candidates: p_lens >= THRESHOLD go on to the "
                    "substructure stage (default: 0.5)", "(default: 256)", "(default: fp32)"):
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_read_json_and_failures_are_one_line_with_exit_status_1(field, tmp_path):
    ok = _lensray("read", field, "--json", "--no-progress", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    doc = json.loads(ok.stdout, parse_constant=_no_nan)  # stdout: strict JSON, nothing else
    assert doc["counts"] == {"rows": 12, "good": 11, "errors": 1, "transient": 0,
                             "permanent": 1} and len(doc["rows"]) == 12
    assert "Execution plan" not in ok.stderr and "INFO" not in ok.stderr  # quiet by default
    missing = _lensray("read", tmp_path / "nothing.fits", cwd=tmp_path)
    assert missing.returncode == 1
    assert _one_line(missing.stderr, "lensray read: ").endswith("no such file or directory")
    strict = _lensray("read", field, "--strict", "--no-progress", cwd=tmp_path)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert len(strict.stderr.strip().splitlines()) <= 3, strict.stderr  # no Ray traceback
    assert re.search(r"broken\.fits: not a readable FITS", _one_line(strict.stderr,
                                                                     "lensray read: "))
    loud = _lensray("read", field, "--strict", "--no-progress", "-v", cwd=tmp_path)
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert re.search(r"broken\.fits: not a readable FITS", _one_line(loud.stderr,
                                                                     "lensray read: "))


def test_a_crash_is_one_line_that_says_so_and_points_to_verbose():
    from pipeline.cli import _one_line

    try:
        {}["band"]
    except KeyError as exc:  # a bug, not a user's mistake: its type is named
        assert _one_line(exc, verbose=False) == "KeyError: 'band' (rerun with -v for the traceback)"
        assert _one_line(exc, verbose=True) == "KeyError: 'band'"
    bad = ValueError("a.fits: no image HDU\n  more detail")  # a user's problem: its message
    assert _one_line(bad, verbose=False) == "a.fits: no image HDU"


def _session_processes(tmp: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(tmp in a for a in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(600)
def test_killing_the_driver_leaves_no_process_of_its_ray_behind(tmp_path):
    ckpts = make_checkpoints(tmp_path / "ckpt")
    make_shards(tmp_path / "field", [40] * 8, seed=5)
    tmp = tempfile.mkdtemp(prefix="lrk", dir="/tmp")  # short: Ray's socket paths must fit
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "field"), "--out",
            str(tmp_path / "out"), "--bands", ",".join(BANDS), "--size", str(SIZE),
            "--batch-size", "8", "--no-progress", "--gallery", "0",
            *[f"--{s}-checkpoint={p}" for s, p in ckpts.items()]]
    driver = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ours: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            kids = psutil.Process(driver.pid).children(recursive=True)
            ours.update({p.pid: p for p in kids})
            titles = []
            for p in kids:
                try:
                    titles.append(" ".join(p.cmdline()))
                except psutil.Error:
                    pass
            if any("MapWorker" in t for t in titles) and any("DashboardAgent" in t for t in titles):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the run ended before it could be killed"
        ours.update({p.pid: p for p in psutil.Process(driver.pid).children(recursive=True)})
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = [p for p in ours.values() if p.is_running()] + _session_processes(tmp)
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        for proc in [*ours.values(), *_session_processes(tmp)]:  # ours only: never other Rays
            try:
                proc.kill()
            except psutil.Error:
                pass
        driver.kill() if driver.poll() is None else None


def test_demo_field_always_holds_lenses(ray_local, tmp_path):
    import numpy as np

    from pipeline.demo import simulate_field
    from pipeline.io import read_cutouts

    for n, seed in ((40, 3), (8, 0), (8, 1)):
        paths = simulate_field(tmp_path / f"f{n}-{seed}", n, seed, progress=False)
        labels = read_cutouts(paths).select_columns(["is_lens"]).to_pandas()["is_lens"]
        assert len(labels) == n and 1 <= int(np.sum(labels)) < n, (n, seed)


def test_docs_python_snippet_runs_as_written_in_a_fresh_process(tmp_path):
    text = (ROOT / "docs" / "cascade.md").read_text()
    snippet = re.search(r"## In Python\n\n```python\n(.*?)```", text, re.S).group(1)
    make_shards(tmp_path / "survey", [4, 3], size=64)
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    import pyarrow.parquet as pq

    cat = pq.read_table(tmp_path / "out").to_pandas()
    assert len(cat) == 7 and cat["p_lens"].notna().all()
    assert "Execution plan" not in run.stderr  # Ray Data's INFO blocks stay hidden


def test_gitignore_covers_the_readme_outputs():
    readme = (ROOT / "README.md").read_text()
    outs = set(re.findall(r"--out ([\w.-]+)/?", readme))
    assert {"demo-out", "results"} <= outs
    check = subprocess.run(["git", "check-ignore", *[f"{o}/x.parquet" for o in sorted(outs)]],
                           cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0 and len(check.stdout.split()) == len(outs), check.stdout
