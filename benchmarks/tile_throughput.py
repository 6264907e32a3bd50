"""Cutting cutouts from a survey tile: ``read_tiles`` on Ray vs single-process astropy loops.

Writes a synthetic ``--side`` x ``--side`` float32 tile with a TAN WCS, a tile-compressed copy
(``CompImageHDU``, RICE_1 with astropy's default quantisation, row-by-row tiles: fpack's
defaults) and a Parquet catalogue of ``--n`` sources placed uniformly on the tile, then times:

* **Ray read_tiles**: ``read_tiles(tile, catalog, size, ["VIS"])`` on a local Ray with
  ``--cpus`` CPUs, every block delivered to the driver (``iter_batches``);
* **astropy, per-source WCS**: the loop a user writes first, ``Cutout2D(hdu.data,
  SkyCoord(ra, dec), size, wcs=wcs, mode="partial")`` per source (memory-mapped tile, or the
  decompressed image for the compressed copy); on the first ``--naive-n`` sources only;
* **astropy, positions vectorised**: the same with all pixel positions computed in one WCS call
  and ``Cutout2D(data, (x, y), size)`` per source: the stronger single-process reference;
* **cube shards**: the same cutouts written as cube shards of 1,000 (``write_cube_shard``) and
  read back with ``read_cutouts``.

The serial loops run in one fresh Ray worker process each (Ray runs workers at nice 15: a loop
in the nice-0 driver would be favoured on a busy machine). Ratios: Ray / (cpus x serial), target
>= 1.0 per core. Memory: peak PSS summed over the driver and every Ray worker while read_tiles
runs, at ``--n`` and at ``--n / 10`` sources (bounded by the strips in flight, not the tile or
the catalogue), and the peak RSS of each serial loop's process.

    python benchmarks/tile_throughput.py --side 10000 --n 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cascade_throughput import PeakMemory  # noqa: E402

BAND = "VIS"


def make_tile(root: Path, side: int, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """The plain tile, its compressed copy and the catalogue (ids, RA/Dec, a magnitude)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [side / 2 + 0.5, side / 2 + 0.5]
    w.wcs.cd = np.array([[-1, 0], [0, 1]]) * 0.1 / 3600  # Euclid VIS: 0.1"/px
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((side, side), dtype=np.float32)
    plain, comp = root / f"tile_{BAND}.fits", root / f"tilez_{BAND}.fits"
    fits.PrimaryHDU(data, w.to_header()).writeto(plain)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, w.to_header(),
                                                       compression_type="RICE_1")]).writeto(comp)
    del data
    x, y = rng.uniform(-0.5, side - 0.5, n), rng.uniform(-0.5, side - 0.5, n)
    ra, dec = w.wcs_pix2world(x, y, 0)
    cat = root / "sources.parquet"
    pq.write_table(pa.table({"id": [f"src{i:07d}" for i in range(n)], "ra": ra, "dec": dec,
                             "mag": rng.uniform(18, 25, n)}), cat)
    return plain, comp, cat


# ----------------------------------------------------------------------------- serial loops
def _open_image(path: str):
    """(pixels, WCS) as a user would get them: memory-mapped plain data, or the compressed
    image decompressed whole (``hdu.data``)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    hdul = fits.open(path)  # astropy's default: memmap for plain images
    hdu = next(h for h in hdul if h.is_image and h.shape)
    return hdu.data, WCS(hdu.header), hdul


def astropy_naive(path: str, cat: str, size: int, limit: int) -> dict:
    import pyarrow.parquet as pq
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D

    t = pq.read_table(cat).slice(0, limit)
    t0, c0 = time.perf_counter(), time.process_time()
    data, wcs, hdul = _open_image(path)
    out = 0.0
    for ra, dec in zip(t["ra"].to_numpy(), t["dec"].to_numpy(), strict=True):
        c = Cutout2D(data, SkyCoord(ra, dec, unit="deg"), (size, size), wcs=wcs, mode="partial",
                     fill_value=np.nan)
        out += float(c.data.astype(np.float32)[size // 2, size // 2])
    hdul.close()
    return _done(t.num_rows, t0, c0)


def astropy_vectorised(path: str, cat: str, size: int, limit: int) -> dict:
    import pyarrow.parquet as pq
    from astropy.nddata import Cutout2D

    t = pq.read_table(cat).slice(0, limit)
    t0, c0 = time.perf_counter(), time.process_time()
    data, wcs, hdul = _open_image(path)
    xs, ys = wcs.all_world2pix(t["ra"].to_numpy(), t["dec"].to_numpy(), 0)
    out = 0.0
    for x, y in zip(xs, ys, strict=True):
        c = Cutout2D(data, (x, y), (size, size), mode="partial", fill_value=np.nan)
        out += float(c.data.astype(np.float32)[size // 2, size // 2])
    hdul.close()
    return _done(t.num_rows, t0, c0)


def _done(rows: int, t0: float, c0: float) -> dict:
    import resource

    return {"rows": rows, "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def in_fresh_worker(fn, *args) -> dict:
    """One call of ``fn`` in a Ray worker process of its own (its peak RSS is the loop's)."""
    import ray

    return ray.get(ray.remote(num_cpus=1, max_calls=1)(fn).remote(*args))


# ----------------------------------------------------------------------------- Ray
def drain(ds) -> tuple[int, float, float]:
    """(rows, wall s, task CPU s) of running ``ds`` with every block delivered to the driver."""
    t0 = time.perf_counter()
    rows = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    wall = time.perf_counter() - t0
    return rows, wall, ds._get_stats_summary().get_total_cpu_time()  # private API


def ray_tiles(path: Path, cat: Path, size: int) -> dict:
    from pipeline.io import read_tiles

    with PeakMemory(children=True) as mem:
        t0 = time.perf_counter()
        ds = read_tiles(str(path), str(cat), size, [BAND])
        plan_s = time.perf_counter() - t0
        rows, wall, cpu = drain(ds)
    return {"rows": rows, "wall": wall + plan_s, "plan_s": plan_s, "cpu": cpu,
            "peak_pss_gib": mem.pss / 2**30}


def write_shards(path: Path, cat: Path, size: int, out: Path, per_shard: int = 1000) -> int:
    """The same cutouts as cube shards (good rows), written from read_tiles' output."""
    from pipeline.io import read_tiles, write_cube_shard

    out.mkdir()
    n = 0
    for b in read_tiles(str(path), str(cat), size, [BAND]).iter_batches(
            batch_size=per_shard, batch_format="numpy"):
        good = np.array([e is None for e in b["error"]])
        table = {k: b[k][good] for k in ("id", "ra", "dec", "mag")}
        write_cube_shard(out / f"s{n:05d}.fits", b["image"][good], table, [BAND])
        n += 1
    return n


def ray_shards(out: Path) -> dict:
    from pipeline.io import read_cutouts

    rows, wall, cpu = drain(read_cutouts(str(out)))
    return {"rows": rows, "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10000, help="tile side in pixels")
    ap.add_argument("--n", type=int, default=100000, help="catalogue sources")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--naive-n", type=int, default=5000,
                    help="sources for the per-source-WCS astropy loop (slow)")
    ap.add_argument("--workdir", default=None, help="where to write the tiles (default: a temp dir)")
    args = ap.parse_args()

    import logging

    import pyarrow.parquet as pq
    import ray

    root = Path(tempfile.mkdtemp(prefix="lensray-tiles-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        plain, comp, cat = make_tile(root, args.side, args.n)
        small = root / "sources-small.parquet"
        pq.write_table(pq.read_table(cat).slice(0, args.n // 10), small)
        print(f"wrote tiles and catalogue in {time.perf_counter() - t0:.0f} s: "
              f"{plain.stat().st_size / 2**20:.0f} MiB plain, "
              f"{comp.stat().st_size / 2**20:.0f} MiB compressed")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
        with PeakMemory(children=True) as idle:
            ray_tiles(plain, small, args.size)  # warm-up: workers started, imports done
        res: dict[str, dict] = {}
        for name, path in (("plain", plain), ("compressed", comp)):
            res[name] = {
                "ray": ray_tiles(path, cat, args.size),
                "ray_small": ray_tiles(path, small, args.size),
                "vectorised": in_fresh_worker(astropy_vectorised, str(path), str(cat),
                                              args.size, args.n),
                "naive": in_fresh_worker(astropy_naive, str(path), str(cat), args.size,
                                         args.naive_n),
            }
            print(name, {k: {kk: round(vv, 3) for kk, vv in v.items()}
                         for k, v in res[name].items()}, flush=True)
        shards = root / "shards"
        n_shards = write_shards(plain, cat, args.size, shards)
        cube = ray_shards(shards)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    print(f"\nTile {args.side}x{args.side} float32, {args.n:,} sources, {args.size}x{args.size} "
          f"cutouts; Ray num_cpus={args.cpus}; {os.cpu_count()} cores {cpu}, Python "
          f"{platform.python_version()}, ray {ray.__version__}, load average "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    head = ("tile", "Ray read_tiles", "astropy, positions vectorised", "astropy, per-source WCS",
            "Ray / (cpus x vectorised)", "Ray / (cpus x per-source WCS)", "Ray CPU efficiency",
            f"Ray peak PSS, {args.n // 10:,} / {args.n:,} sources (GiB)",
            "serial peak RSS, vectorised (GiB)")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, r in res.items():
        rate = {k: r[k]["rows"] / r[k]["wall"] for k in ("ray", "vectorised", "naive")}
        eff = (r["ray"]["rows"] / r["ray"]["cpu"]) / (r["vectorised"]["rows"] / r["vectorised"]["cpu"])
        print(f"| {name} | {rate['ray']:,.0f}/s | {rate['vectorised']:,.0f}/s | "
              f"{rate['naive']:,.0f}/s | {rate['ray'] / (args.cpus * rate['vectorised']):.2f} | "
              f"{rate['ray'] / (args.cpus * rate['naive']):.2f} | {eff:.2f} | "
              f"{r['ray_small']['peak_pss_gib']:.2f} / {r['ray']['peak_pss_gib']:.2f} | "
              f"{r['vectorised']['peak_rss_gib']:.2f} |")
    cube_rate = cube["rows"] / cube["wall"]
    print(f"\nidle Ray (driver + workers) peak PSS during the warm-up: {idle.pss / 2**30:.2f} GiB")
    print(f"planning (catalogue, headers, assignment) of {args.n:,} sources: "
          f"{res['plain']['ray']['plan_s']:.2f} s (included in the Ray rate)")
    print(f"cube shards ({n_shards} of 1,000) read back with read_cutouts: {cube_rate:,.0f}/s; "
          f"read_tiles plain / cube shards: {res['plain']['ray']['rows'] / res['plain']['ray']['wall'] / cube_rate:.2f}")
    print("Ray CPU efficiency = cutouts per CPU-second in Ray's read tasks / cutouts per "
          "CPU-second of the vectorised astropy loop.")


if __name__ == "__main__":
    main()
