"""The ``lensray`` command: one entry point, one sub-command per job.

Each sub-command is a pair ``_add_<name>(parser)`` / ``_run_<name>(args)`` registered in
``COMMANDS``; the work itself lives in the package, so the CLI, ``jobs/`` and users' Python
all call the same functions. Heavy imports happen inside ``_run_*`` to keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import sys

# ----------------------------------------------------------------------------- sub-commands
# (add new sub-commands below as _add_x/_run_x pairs and list them in COMMANDS)


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="instrument: hst, euclid-vis, ground-gri")
    p.add_argument("--task", required=True, choices=["lens", "substructure"])
    p.add_argument("--n", type=int, required=True, help="number of images over all splits")
    p.add_argument("--seed", type=int, default=0, help="master seed (same seed, same bytes)")
    p.add_argument("--out", required=True, help="output directory (manifest.json + shards)")
    p.add_argument("--size", type=int, default=None, help="cutout side in pixels (default 64)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--clean", action="store_true", help="also store noiseless images (CLEAN)")
    p.add_argument("--backend", default="lenstronomy", choices=["lenstronomy", "caustics"])
    p.add_argument("--prior", action="append", default=[], metavar="NAME=LO,HI",
                   help="override a prior, e.g. theta_e=0.8,2.5 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_simulate(args: argparse.Namespace) -> int:
    from pipeline.simulate import simulate
    from pipeline.simulate.priors import parse_prior_overrides

    manifest = simulate(
        args.preset, args.task, args.n, args.seed, args.out, size=args.size,
        priors=parse_prior_overrides(args.prior) or None, shard_size=args.shard_size,
        split_fractions=[float(x) for x in args.splits.split(",")], clean=args.clean,
        backend=args.backend, overwrite=args.overwrite, progress=not args.no_progress,
    )
    counts = ", ".join(f"{k}={v['n']}" for k, v in manifest["splits"].items())
    print(f"wrote {manifest['n']} images ({counts}) to {args.out}; classes {manifest['counts']}")
    return 0


def _add_read(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="FITS files, directories, globs or URIs (s3://, gs://)")
    p.add_argument("--bands", nargs="+", default=None, help="bands to read, e.g. VIS NIR_H")
    p.add_argument("--size", type=int, default=None, help="centre-crop/pad cutouts to N x N")
    p.add_argument("--limit", type=int, default=50, help="show at most K rows (counts cover all)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_read(args: argparse.Namespace) -> int:
    import logging

    from pipeline._ray import ensure_ray
    from pipeline.io import read_cutouts
    from pipeline.io.report import format_table, summarize

    ensure_ray(log_to_driver=False, logging_level="ERROR")
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress bar instead
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = read_cutouts(args.inputs, bands=args.bands, size=args.size, strict=args.strict)
    rows, counts = summarize(ds, progress=not args.no_progress)
    print(format_table(rows, counts, args.limit))
    return 0


COMMANDS: dict[str, tuple] = {
    "read": (_add_read, _run_read, "read FITS cutouts on Ray and list them (id, ra, dec, shape, errors)"),
    "simulate": (_add_simulate, _run_simulate, "simulate labelled lens cutouts (FITS shards)"),
}


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = argparse.ArgumentParser(
        prog="lensray", description="Survey-scale strong-lens pipeline on Ray."
    )
    parser.add_argument("--version", action="version", version=f"lensray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _add, run, _help = COMMANDS[args.command]
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
