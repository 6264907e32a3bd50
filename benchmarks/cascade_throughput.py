"""End-to-end cutouts/s of the cascade on Ray vs a hand-written single-process PyTorch loop.

    python benchmarks/cascade_throughput.py --n 10000 100000

For each N it writes N 64x64 one-band cutouts (sky noise + a Gaussian galaxy, cheap to make)
as FITS cube shards of 1,000 with ``write_cube_shard``, then measures in one run:

* **lensray**: ``run_cascade`` with its default stages (today LensDetect -> Substructure on
  candidates: the shipped denoiser runs only when a model reads its output) -> per-shard
  Parquet; on CPUs one pool of actors that read their own files) on an embedded local Ray
  using every core;
* **baseline**: one Python process, same cores (torch threads = cores): for each shard,
  astropy read (``read_fits_file``, the reader's own decode) -> the same models with
  ``predict`` -> the same candidate cut -> one Parquet file per shard.

It prints cutouts/s for both, their ratio (target >= 0.9) and the peak memory (driver
plus every Ray worker for lensray, PSS and RSS; the process for the baseline). The models are the shipped
weights when present, else freshly initialised networks of the same architectures (speed does
not depend on the weights); ``--models small`` swaps in light networks, where the cascade's own
overhead weighs most. ``--repeat R`` makes R paired runs per size and reports medians: on a
2-core machine one run's ratio varies by up to +-0.1 at 10^4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PIXEL_SCALE = 0.101  # the euclid-vis models' (shipped and ``small``): rows need no resampling


def make_field(directory: Path, n: int, size: int = 64, shard: int = 1000, seed: int = 0) -> list[Path]:
    """``n`` noisy cutouts with a Gaussian galaxy each, as cube shards (reused if present),
    at the models' pixel scale (a cutout without one is an error row for a model stage)."""
    from pipeline.io import write_cube_shard

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[:size, :size] - size / 2
    for i, start in enumerate(range(0, n, shard)):
        path = directory / f"shard-{i:05d}.fits"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])
        m = min(shard, n - start)
        r = rng.uniform(1.5, 6.0, (m, 1, 1, 1))
        amp = rng.lognormal(3.0, 1.0, (m, 1, 1, 1))
        images = 100 + rng.normal(0, 5, (m, 1, size, size)) + amp * np.exp(-(xx**2 + yy**2) / (2 * r**2))
        ids = np.array([f"bench-{start + j}" for j in range(m)])
        write_cube_shard(path, images.astype(np.float32),
                         {"id": ids, "ra": rng.uniform(0, 360, m), "dec": rng.uniform(-60, 60, m)},
                         ["VIS"], pixel_scale=PIXEL_SCALE)
    return paths


SMALL = {  # light networks: the cascade's own overhead dominates, the hardest case for the ratio
    "denoise": ("unet_denoiser", {"in_channels": 1, "base": 8, "depth": 2}),
    "lens-detect": ("lastro_cnn", {"in_channels": 1, "num_outputs": 1, "dense": 128}),
    "substructure": ("lastro_cnn", {"in_channels": 1, "num_outputs": 7, "dense": 128}),
}


def checkpoints(workdir: Path, models: str) -> tuple[dict[str, str | None], str]:
    """``shipped``: the shipped weights (missing ones: the same architectures, freshly
    initialised); ``small``: light networks, freshly initialised. Speed does not depend on the
    weights, only on the architectures."""
    import json as _json

    import torch

    from pipeline import __version__
    from pipeline.models import (
        STAGES,
        create_model,
        default_model,
        model_kwargs,
        pretrained_dir,
        save_checkpoint,
    )
    from pipeline.models.normalize import DEFAULT_NORMALIZATION

    out, made = {}, []
    for i, s in enumerate(STAGES):
        if models == "shipped" and (pretrained_dir(s) / "model.safetensors").is_file():
            out[s] = None
            continue
        shipped = pretrained_dir(s) / "config.json"
        cfg = _json.loads(shipped.read_text()) if shipped.is_file() and models == "shipped" else {}
        cfg.update(task=s, bands=["VIS"], size=64, pixel_scale=PIXEL_SCALE, lensray_version=__version__,
                   normalization=dict(DEFAULT_NORMALIZATION))
        if s == "substructure":
            cfg["classes"] = ["no_sub", "cdm", "vortex"]
            cfg["targets"] = {"log10_m_axion": {"mean": -22.5, "std": 0.6, "class": 2},
                              "sigma_sub": {"mean": 0.05, "std": 0.03, "class": 1}}
        if models == "small":
            cfg["model"], cfg["model_kwargs"] = SMALL[s]
        else:
            cfg.setdefault("model", default_model(s))
            cfg["model_kwargs"] = cfg.get("model_kwargs") or model_kwargs(cfg["model"], cfg)
        # Seeded: an untrained detector's scores sit near one value, so its init decides whether
        # ~0% or ~100% of rows reach the substructure model, i.e. the workload.
        torch.manual_seed(i)
        model = create_model(cfg["model"], **cfg["model_kwargs"])
        out[s] = str(save_checkpoint(model, cfg, workdir / f"ckpt-{models}" / s))
        made.append(f"{s}: {cfg['model']}")
    label = {"shipped": "shipped weights", "small": "small networks"}[models]
    return out, label + (f" (freshly initialised {', '.join(made)})" if made else "")


class PeakMemory:
    """Peak summed memory of this process and (optionally) all its descendants (Ray workers):
    RSS (counts shared pages, e.g. the object store, once per process that maps them) and PSS
    (shares them out, so the sum is what the machine really holds). ``quarters()``: the peak
    PSS reached by each quarter of the run, to tell a plateau from growth."""

    def __init__(self, children: bool):
        import psutil

        self.proc, self.children = psutil.Process(), children
        self.rss = self.pss = 0
        self.trace: list[tuple[float, int]] = []  # (time, PSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        procs = [self.proc] + (self.proc.children(recursive=True) if self.children else [])
        rss = pss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                pss += _pss(p.pid)
            except (psutil.Error, OSError):
                pass
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
        self.trace.append((time.perf_counter(), pss))

    def quarters(self) -> list[float]:
        """Peak PSS (GiB) up to 25, 50, 75 and 100% of the run."""
        t0, t1 = self.trace[0][0], self.trace[-1][0]
        return [max(p for t, p in self.trace if t <= t0 + q * (t1 - t0)) / 2**30
                for q in (0.25, 0.5, 0.75, 1.0)]

    def _loop(self):
        # Every 2 s: one sample reads smaps_rollup of ~10 Ray processes, ~27 ms of CPU; at 2 Hz
        # that slowed the cascade it measured by ~5% (the loop's own sample costs ~3 ms).
        while not self._stop.wait(2.0):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _pss(pid: int) -> int:
    """Proportional set size from /proc/<pid>/smaps_rollup (cheap; psutil's memory_full_info
    parses the whole smaps file, which at 2 Hz over ~15 Ray processes costs a full core)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def baseline(paths: list[Path], out: Path, ckpts: dict, threshold: float, stages: list[str]) -> int:
    """Single-process loop: astropy read -> the cascade's ``stages`` (each model on the raw
    cutouts, as the cascade routes them) -> Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.io.schema import good_mask
    from pipeline.models import load_checkpoint, load_pretrained

    torch.set_num_threads(os.cpu_count() or 1)
    assert "denoise" not in stages, "the loop runs models on raw cutouts only"
    models = {s: (load_checkpoint(c) if c else load_pretrained(s))
              for s, c in ckpts.items() if s in stages}
    from pipeline.models import predict

    out.mkdir(parents=True, exist_ok=True)
    options = ReadOptions(bands=("VIS",), size=64)
    rows = 0
    for path in paths:
        batch = read_fits_file(str(path), options)
        good = good_mask(batch)
        images = batch["image"][good]
        cols = {k: batch[k][good] for k in ("id", "ra", "dec", "source", "index")}
        p = predict(*models["lens-detect"], images)["p_lens"]
        cand = p >= threshold
        sub = predict(*models["substructure"], images[cand]) if cand.any() else {}
        cols.update(p_lens=p, is_candidate=cand)
        for name, v in sub.items():
            full = np.full(len(p), np.nan, np.float32)
            full[cand] = v
            cols[name] = full
        pq.write_table(pa.table(cols), out / f"{path.stem}.parquet")
        rows += len(batch["id"])
    return rows


def default_stages(ckpts: dict) -> list[str]:
    """The stages ``run_cascade`` builds by default from these checkpoints (the baseline runs
    the same ones)."""
    from pipeline.stages import build_stages

    return [s.name for s in build_stages(checkpoints=ckpts)]  # (None: the shipped weights)


def cascade(paths: list[Path], out: Path, ckpts: dict, threshold: float, batch_size: int,
            fuse: bool | None = None, buffer_gib: float | None = None) -> int:
    from pipeline.run import run_cascade

    summary = run_cascade([str(p) for p in paths], out, bands=["VIS"], size=64,
                          threshold=threshold, batch_size=batch_size, fuse=fuse, buffer_gib=buffer_gib,
                          checkpoints={s: c for s, c in ckpts.items() if c}, gallery=0,
                          progress=False)
    # every row computed: an error row (e.g. a cutout the models cannot fit) costs nothing
    assert summary["adds_up"] and summary["this_run"]["errors"] == 0, summary["this_run"]
    return summary["this_run"]["rows"], summary["this_run"]["candidates"]


def measure(n: int, field: list[Path], workdir: Path, ckpts: dict, args, lensray_first: bool) -> dict:
    """One paired run: the loop and the cascade (on a fresh local Ray), in the given order
    (repeats alternate it, so neither side always runs on a warmer machine)."""
    import logging

    import ray

    for d in ("out-base", "out-ray", "out-unfused"):
        shutil.rmtree(workdir / f"{d}-{n}", ignore_errors=True)

    def run_loop():
        with PeakMemory(children=False) as mem:
            t = time.perf_counter()
            rows = baseline(field, workdir / f"out-base-{n}", ckpts, args.threshold, args.stages)
            return rows, time.perf_counter() - t, mem

    def run_lensray():
        # A fresh local Ray per run: each peak is that run's own (the object store keeps the
        # pages an earlier run touched).
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        with PeakMemory(children=True) as mem:
            t = time.perf_counter()
            rows, cands = cascade(field, workdir / f"out-ray-{n}", ckpts, args.threshold,
                                  args.batch_size, buffer_gib=args.buffer_gib)
            dt = time.perf_counter() - t
        unfused = None
        if args.unfused:
            t = time.perf_counter()
            rows_u, _ = cascade(field, workdir / f"out-unfused-{n}", ckpts, args.threshold,
                                args.batch_size, fuse=False, buffer_gib=args.buffer_gib)
            unfused = rows_u / (time.perf_counter() - t)
        ray.shutdown()
        return rows, cands, dt, mem, unfused

    if lensray_first:
        rows_r, cands, dt_r, mem_r, unfused = run_lensray()
        rows_b, dt_b, mem_b = run_loop()
    else:
        rows_b, dt_b, mem_b = run_loop()
        rows_r, cands, dt_r, mem_r, unfused = run_lensray()
    assert rows_b == rows_r == n, (rows_b, rows_r, n)
    return {"n": n, "lensray_per_s": rows_r / dt_r, "baseline_per_s": rows_b / dt_b,
            "unfused_per_s": unfused, "ratio": (rows_r / dt_r) / (rows_b / dt_b),
            "candidates": cands / n, "lensray_peak_rss_gib": mem_r.rss / 2**30,
            "lensray_peak_pss_gib": mem_r.pss / 2**30, "baseline_peak_rss_gib": mem_b.rss / 2**30,
            "lensray_pss_by_quarter_gib": mem_r.quarters(),
            "lensray_s": dt_r, "baseline_s": dt_b, "lensray_first": lensray_first}


def summarise(runs: list[dict]) -> dict:
    """Medians over paired runs (the ratio: the median of each run's own ratio), peak memory:
    the highest; plus the ratio's range and every run."""
    out = {}
    for key, value in runs[0].items():
        if key == "lensray_first":
            continue  # per run only
        values = [r[key] for r in runs]
        if value is None or key == "n":
            out[key] = value
        elif isinstance(value, list):
            out[key] = [max(v) for v in zip(*values, strict=True)]
        else:
            out[key] = max(values) if "peak" in key else float(np.median(values))
    out["ratio_range"] = [min(r["ratio"] for r in runs), max(r["ratio"] for r in runs)]
    out["runs"] = runs
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workdir", default=None, help="where shards/outputs go (default: a temp dir)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--models", choices=["shipped", "small"], default="shipped",
                    help="shipped networks, or small ones (stresses the cascade's overhead)")
    ap.add_argument("--unfused", action="store_true",
                    help="also time the cascade with one actor pool per stage (fuse=False)")
    ap.add_argument("--buffer-gib", type=float, default=None,
                    help="run_cascade's object-store budget (default: its own)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="paired runs per size; the table shows medians (and the ratio's range)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the generated shards")
    args = ap.parse_args(argv)

    from pipeline import __version__

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lensray-bench-"))
    ckpts, weights = checkpoints(workdir, args.models)
    args.stages = default_stages(ckpts)
    weights += f"; stages {' -> '.join(args.stages)}"
    results = []
    for n in args.n:
        field = make_field(workdir / f"field-{n}", n)
        runs = [measure(n, field, workdir, ckpts, args, lensray_first=bool(i % 2))
                for i in range(args.repeat)]
        results.append(summarise(runs))
        print(json.dumps(results[-1]), flush=True)  # partial results of a long run
        if not args.keep:
            shutil.rmtree(field, ignore_errors=True)

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{_mem_gib():.0f} GiB, torch threads {os.cpu_count()}, lensray {__version__}")
    print(f"\nCascade throughput ({weights}; threshold {args.threshold}; median of "
          f"{args.repeat} paired run(s)); {machine}")
    print("| cutouts | candidates | lensray on Ray (cutouts/s) | single-process PyTorch (cutouts/s) "
          "| ratio (range) | peak memory lensray, PSS / RSS (GiB) | peak RSS baseline (GiB) "
          "| lensray peak PSS by quarter of the run (GiB) | lensray, a pool per stage (cutouts/s, ratio) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        u = r["unfused_per_s"]
        unf = f"{u:.0f}, {u / r['baseline_per_s']:.2f}" if u else "-"
        lo, hi = r["ratio_range"]
        spread = f" ({lo:.2f}-{hi:.2f})" if len(r["runs"]) > 1 else ""
        print(f"| {r['n']:,} | {r['candidates']:.1%} | {r['lensray_per_s']:.0f} | {r['baseline_per_s']:.0f} | "
              f"{r['ratio']:.2f}{spread} | {r['lensray_peak_pss_gib']:.2f} / {r['lensray_peak_rss_gib']:.2f} | "
              f"{r['baseline_peak_rss_gib']:.2f} | "
              f"{' / '.join(f'{q:.2f}' for q in r['lensray_pss_by_quarter_gib'])} | {unf} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "weights": weights,
                                               "results": results}, indent=2))
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _mem_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    raise SystemExit(main())
