"""Rows/s of ``predict`` by rows per forward pass (``batch_size``), for each shipped network.

    python benchmarks/forward_chunk.py [--threads 1 2] [--rows 256] [--chunks 8 16 32 64 128 256]

For each network and thread count, ``predict`` runs ``--rows`` cutouts in forward passes of each
chunk size and prints rows/s, the ratio to a 256-row chunk and the share of the time the process
spent in the kernel (system time: page faults of freshly mapped activation memory). One thread
is what a stage actor uses on a CPU-only cluster; all cores is what a single-process loop uses.
This is what ``pipeline.models.inference.default_chunk`` is chosen from.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch


def rate(model, config, x: np.ndarray, chunk: int, reps: int) -> tuple[float, float]:
    """(rows/s, share of the time in system calls) of predict over ``x`` in ``chunk``-row passes."""
    from pipeline.models import predict

    predict(model, config, x[:chunk], batch_size=chunk)  # warm-up: kernel selection
    best, sys_share = 0.0, 0.0
    for _ in range(reps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        predict(model, config, x, batch_size=chunk)
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        if len(x) / dt > best:
            best = len(x) / dt
            sys_share = (r1.ru_stime - r0.ru_stime) / ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return best, sys_share


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--reps", type=int, default=2, help="runs per cell (the best is kept)")
    args = ap.parse_args(argv)

    from pipeline.models import STAGES, load_pretrained

    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; predict on {args.rows} 64x64 cutouts; rows/s (ratio to 256 rows "
          "per pass; system-time share)\n")
    print("| network | threads | " + " | ".join(f"{c} rows" for c in args.chunks) + " |")
    print("|---|---:|" + "---:|" * len(args.chunks))
    for task in STAGES:
        model, config = load_pretrained(task, device="cpu")
        x = (100 + 5 * rng.standard_normal((args.rows, len(config["bands"]), 64, 64))).astype(np.float32)
        for threads in args.threads:
            torch.set_num_threads(threads)
            cells = {c: rate(model, config, x, c, args.reps) for c in args.chunks}
            ref = cells.get(256, cells[args.chunks[-1]])[0]
            row = [f"{r:.0f} ({r / ref:.2f}x; {s:.0%})" for r, s in cells.values()]
            print(f"| `{config['model']}` ({task}) | {threads} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
