"""Read throughput of 64x64 cutouts: one file per cutout vs multi-HDU files vs cube shards.

Each layout is read (a) through ``read_cutouts`` on a local Ray with ``--cpus`` CPUs, (b) with a
single-process loop of ``read_fits_file`` (the same decode without Ray) and (c) with a plain
single-process astropy loop (``fits.open`` + pixels as float32: the floor of any FITS reader).
Both serial loops run inside one Ray worker process, at the priority of Ray's read workers.
For comparison it also times the alternative Ray design, ``ray.data.read_binary_files`` followed
by ``map_batches`` decoding. Ratios printed:

* cube / one-file: how much faster the same cutouts read when stored as cube shards;
* Ray per core: Ray rate / (cpus x serial rate), against the same decode and against the plain
  astropy loop; target >= 0.8.

    python benchmarks/read_throughput.py --n 4000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits


def make_files(root: Path, n: int, size: int, per_file: int, per_shard: int) -> dict[str, Path]:
    from pipeline.io import write_cube_shard

    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size)).astype(np.float32)
    dirs = {k: root / k for k in ("one-file", "multi-HDU", "cube")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for i in range(n):
        fits.PrimaryHDU(images[i]).writeto(dirs["one-file"] / f"c{i:06d}.fits")
    for j, start in enumerate(range(0, n, per_file)):
        hdus = [fits.PrimaryHDU(images[start])]
        hdus += [fits.ImageHDU(im) for im in images[start + 1 : start + per_file]]
        fits.HDUList(hdus).writeto(dirs["multi-HDU"] / f"m{j:05d}.fits")
    for j, start in enumerate(range(0, n, per_shard)):
        chunk = images[start : start + per_shard, None]
        ids = [f"c{i:06d}" for i in range(start, start + len(chunk))]
        write_cube_shard(dirs["cube"] / f"s{j:04d}.fits", chunk, {"id": ids}, ["VIS"])
    return dirs


def plain_astropy(files: list[str]) -> int:
    """The floor: open each file, take every image HDU's pixels as native float32."""
    rows = 0
    for f in files:
        with fits.open(f, memmap=False) as h:
            for hdu in h:
                if hdu.is_image and hdu.data is not None:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    rows += len(data) if data.ndim == 4 else 1
    return rows


def serial_decode(files: list[str]) -> int:
    """read_cutouts' own decoding (layout detection, WCS, policies), one process, no Ray."""
    from pipeline.io import read_fits_file

    return sum(len(read_fits_file(f)["id"]) for f in files)


def in_ray_worker(fn, files: list[str], repeat: int = 2) -> tuple[float, int]:
    """Best time of a serial loop run in ONE Ray worker process: Ray starts workers at nice 15,
    so on a shared machine a loop in the (nice 0) driver would not be a fair per-core reference."""
    import ray

    @ray.remote(num_cpus=1)
    def run(files):
        return timed(fn, files, repeat=repeat)

    return ray.get(run.remote(files))


def ray_datasource(d: Path) -> int:
    from pipeline.io import read_cutouts

    return read_cutouts(d).materialize().count()


def ray_binary(d: Path, n_files: int) -> int:
    import ray

    from pipeline.io.decode import decode_fits

    def decode(batch):
        parts = [decode_fits(b, p) for b, p in zip(batch["bytes"], batch["path"], strict=True)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    from pipeline.io.reader import _default_blocks

    total = sum(p.stat().st_size for p in d.glob("*.fits"))
    blocks = _default_blocks(n_files, total)  # the same number of read tasks as read_cutouts
    ds = ray.data.read_binary_files(str(d), include_paths=True, override_num_blocks=blocks)
    return ds.map_batches(decode, batch_size=None).materialize().count()


def timed(fn, *args, repeat: int = 2) -> tuple[float, int]:
    """Best wall time over ``repeat`` runs (the first Ray run also warms up workers)."""
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="cutouts per layout")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-file", type=int, default=50, help="cutouts per multi-HDU file")
    ap.add_argument("--per-shard", type=int, default=1000, help="cutouts per cube shard")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--no-binary", action="store_true", help="skip the read_binary_files design")
    args = ap.parse_args()

    import logging

    import ray

    root = Path(tempfile.mkdtemp(prefix="lensray-bench-"))
    try:
        dirs = make_files(root, args.n, args.size, args.per_file, args.per_shard)
        ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False

        one_file = sorted(dirs["one-file"].glob("*.fits"))[0]
        fixed, _ = timed(ray_datasource, one_file, repeat=3)  # plan + schedule + collect, ~no work

        results = {}
        for name, d in dirs.items():
            files = sorted(str(p) for p in d.glob("*.fits"))
            t_plain, r_plain = in_ray_worker(plain_astropy, files)
            t_serial, r_serial = in_ray_worker(serial_decode, files)
            t_ray, r_ray = timed(ray_datasource, d)
            t_bin, r_bin = (
                (float("nan"), args.n) if args.no_binary else timed(ray_binary, d, len(files))
            )
            assert r_plain == r_serial == r_ray == r_bin == args.n, (
                name,
                r_plain,
                r_serial,
                r_ray,
                r_bin,
            )
            results[name] = {
                "files": len(files),
                "ray": args.n / t_ray,
                "binary": args.n / t_bin,
                "serial": args.n / t_serial,
                "plain": args.n / t_plain,
            }
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    print(
        f"\n{args.n} cutouts of {args.size}x{args.size} float32 per layout; Ray with "
        f"num_cpus={args.cpus}; machine: {os.cpu_count()} cores {cpu}, Python "
        f"{platform.python_version()}, ray {ray.__version__}"
    )
    head = (
        "layout",
        "files",
        "Ray read_cutouts",
        "Ray binary+decode",
        "serial decode",
        "plain astropy",
        "Ray / (cpus x serial decode)",
        "Ray / (cpus x plain astropy)",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, r in results.items():
        vs_serial = r["ray"] / (args.cpus * r["serial"])
        vs_plain = r["ray"] / (args.cpus * r["plain"])
        print(
            f"| {name} | {r['files']} | {r['ray']:,.0f}/s | {r['binary']:,.0f}/s | "
            f"{r['serial']:,.0f}/s | {r['plain']:,.0f}/s | {vs_serial:.2f} | {vs_plain:.2f} |"
        )
    print(
        f"\nRay fixed cost of one read_cutouts(...).materialize() of a single file: "
        f"{fixed:.2f} s (included in the rates above)"
    )
    one, cube = results["one-file"], results["cube"]
    print(f"cube / one-file through Ray: {cube['ray'] / one['ray']:.1f}x (target >= 10x)")
    print(
        f"datasource / binary+decode: one-file {one['ray'] / one['binary']:.2f}x, "
        f"cube {cube['ray'] / cube['binary']:.2f}x"
    )


if __name__ == "__main__":
    main()
