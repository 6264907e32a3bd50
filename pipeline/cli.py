"""The ``lensray`` command: one entry point, one sub-command per job.

Each sub-command is a pair ``_add_<name>(parser)`` / ``_run_<name>(args)`` registered in
``COMMANDS``; the work itself lives in the package, so the CLI, ``jobs/`` and users' Python
all call the same functions. Heavy imports happen inside ``_run_*`` to keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.models.tasks import DENOISE, LENS_DETECT, STAGES
from pipeline.precision import PRECISIONS

# ----------------------------------------------------------------------------- sub-commands
# (add new sub-commands below as _add_x/_run_x pairs and list them in COMMANDS)


def _add_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="instrument: hst, euclid-vis, ground-gri")
    p.add_argument("--task", required=True, choices=["lens", "substructure"])
    p.add_argument("--n", type=int, default=None,
                   help="number of images over all splits (required unless --backgrounds)")
    p.add_argument("--seed", type=int, default=0, help="master seed (same seed, same bytes)")
    p.add_argument("--out", required=True, help="output directory (manifest.json + shards)")
    p.add_argument("--size", type=int, default=None, help="cutout side in pixels (default 64)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--clean", action="store_true", help="also store noiseless images (CLEAN)")
    p.add_argument("--backend", default="lenstronomy", choices=["lenstronomy", "caustics"])
    p.add_argument("--matched", action="store_true",
                   help="render every lens once per class (substructure) or with and without its "
                        "source plus extra hard negatives (lens): only the signal separates them")
    p.add_argument("--backgrounds", nargs="+", default=None, metavar="INPUT",
                   help="lens task: paint arcs onto these real cutouts (files, globs, dirs, "
                        "URIs); each gives a non-lens (untouched) and a lens")
    p.add_argument("--sources", nargs="+", default=None, metavar="INPUT",
                   help="lens task: real high-resolution galaxy stamps (e.g. HST cutouts; files, "
                        "globs, dirs, URIs) as the lensed sources instead of clumpy Sersics")
    p.add_argument("--bands", nargs="+", default=None,
                   help="--backgrounds: bands to read by name, in the preset's order")
    p.add_argument("--arc-snr", default="10,200", metavar="LO,HI",
                   help="--backgrounds: injected arc S/N, log-uniform (default 10,200)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=LO,HI",
                   help="override a prior, e.g. theta_e=0.8,2.5 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_simulate(args: argparse.Namespace) -> int:
    from pipeline.simulate import simulate
    from pipeline.simulate.priors import parse_prior_overrides

    splits = [float(x) for x in args.splits.split(",")]
    if args.backgrounds:
        from pipeline.simulate.inject import simulate_injections

        if args.task != "lens":
            raise SystemExit("lensray simulate: --backgrounds makes lens-task sets (--task lens)")
        m = simulate_injections(
            args.preset, args.backgrounds, args.out, args.seed, bands=args.bands, size=args.size,
            priors=parse_prior_overrides(args.prior) or None,
            snr_range=tuple(float(x) for x in args.arc_snr.split(",")), split_fractions=splits,
            sources=args.sources, overwrite=args.overwrite, progress=not args.no_progress)
        print(f"wrote {m['n']} images ({m['counts']['injected']} backgrounds with and without "
              f"arcs) to {args.out}; {len(m['skipped'])} cutouts skipped (see manifest.json)")
        return 0
    if args.n is None:
        raise SystemExit("lensray simulate: --n is required (or --backgrounds)")
    manifest = simulate(
        args.preset, args.task, args.n, args.seed, args.out, size=args.size,
        priors=parse_prior_overrides(args.prior) or None, shard_size=args.shard_size,
        split_fractions=splits, clean=args.clean,
        backend=args.backend, matched=args.matched, sources=args.sources,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    counts = ", ".join(f"{k}={v['n']}" for k, v in manifest["splits"].items())
    print(f"wrote {manifest['n']} images ({counts}) to {args.out}; classes {manifest['counts']}")
    return 0


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``tune`` (the training recipe and Ray resources)."""
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--model", default=None, help="registered network (default: the stage's)")
    p.add_argument("--data", required=True, help="simulated data dir ({train,val,test}/*.fits)")
    p.add_argument("--out", required=True, help="output checkpoint dir (safetensors + config)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--patience", type=int, default=None, help="early-stopping epochs")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this long")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=JSON",
                   help="network argument, e.g. widths=[16,32,64] (repeatable)")
    p.add_argument("--augment", default=None, metavar="JSON",
                   help='augmentation overrides, e.g. \'{"max_scale": 0}\' (D4 flips/rotations '
                        'always; max_shift px, max_scale, p_scale)')
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning; same network)")
    p.add_argument("--regression-weight", type=float, default=None,
                   help="substructure: weight of the regression losses (default 0.1)")
    p.add_argument("--nll-beta", type=float, default=None,
                   help="substructure: beta-NLL exponent for the regression losses (default 0: plain NLL)")
    p.add_argument("--train-classes", nargs="+", default=None, metavar="CLASS",
                   help="train and validate only on rows of these classes (e.g. vortex, for "
                        "the shipped substructure model's axion-mass regressor)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="bf16: autocast matmuls/convs to bfloat16 (faster on CPUs with "
                        "AVX512-BF16/AMX and on recent GPUs, see docs/models.md; default fp32)")
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="train on GPUs (default: when CUDA is available)")
    p.add_argument("--storage-path", default=None, help="Ray run storage (default OUT/ray_runs)")


def _recipe(args: argparse.Namespace) -> dict:
    import json

    keys = ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed", "threads",
            "max_minutes", "init", "regression_weight", "nll_beta", "train_classes", "precision")
    overrides = {}
    for item in args.model_arg:
        key, sep, val = item.partition("=")
        if not sep:
            raise SystemExit(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    extra = {}
    if args.augment:
        try:
            extra["augment"] = json.loads(args.augment)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--augment {args.augment!r}: not JSON ({e})") from e
    return {"model_overrides": overrides, "cpus_per_worker": args.cpus_per_worker, **extra,
            "storage_path": args.storage_path,
            **{k: getattr(args, k) for k in keys if getattr(args, k) is not None}}


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--adapt", nargs="+", default=None, metavar="INPUT",
                   help="unlabeled cutouts of the survey the model will run on (files, globs, "
                        "dirs, URIs; fitted to the model like `lensray run`'s): domain-"
                        "adversarial training (DANN) makes its features not tell them from "
                        "the training set's (docs/models.md)")
    p.add_argument("--adapt-weight", type=float, default=None, metavar="W",
                   help="with --adapt: final strength of the reversed domain gradient "
                        "(default 1; ramped from 0 as Ganin et al.)")


def _run_train(args: argparse.Namespace) -> int:
    import json
    import shlex

    from pipeline.train.loop import train

    adapt = {k: v for k in ("adapt", "adapt_weight") if (v := getattr(args, k)) is not None}
    out = train(args.stage, args.data, args.out, args.model, num_workers=args.num_workers,
                use_gpu=args.use_gpu, recipe_command="lensray " + shlex.join(sys.argv[1:]),
                **_recipe(args), **adapt)
    cfg = json.loads((out / "config.json").read_text())
    print(json.dumps({"checkpoint": str(out), "metrics": cfg.get("metrics")}, indent=2))
    return 0


def _add_tune(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    p.add_argument("--num-samples", type=int, default=8, help="trials")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before pruning")


def _run_tune(args: argparse.Namespace) -> int:
    import json

    from pipeline.train.tune import tune_stage

    recipe = _recipe(args)
    overrides = recipe.pop("model_overrides")
    out, trials = tune_stage(args.stage, args.data, args.out, args.model,
                             num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                             grace_period=args.grace_period, model_overrides=overrides, **recipe)
    cfg = json.loads((out / "config.json").read_text())
    print(json.dumps({"checkpoint": str(out), "trials": trials, "metrics": cfg.get("metrics")},
                     indent=2, default=str))
    return 0


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="with --labels: FITS files, directories or globs to run the cascade on "
                   "(default: the files of a label folder)")
    p.add_argument("--labels", default=None,
                   help="truth of observed cutouts: a folder with lens/ and nonlens/, or a CSV/"
                   "Parquet table with source, label (and group) columns; runs the cascade and "
                   "writes OUT/metrics.json, roc.png, mistakes.png (docs/surveys.md)")
    p.add_argument("--out", default=None, help="with --labels: output directory")
    p.add_argument("--lens-rate", type=float, default=None,
                   help="with --labels: lenses per cutout for the purity figures (default 1e-3)")
    _add_geometry(p)
    _add_models(p)
    p.add_argument("--data", default=None,
                   help="one model on simulated data instead: dir with {train,val,test}/*.fits")
    p.add_argument("--stage", default=None, choices=STAGES, help="with --data: the stage")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None, help="checkpoint dir (default: shipped)")
    src.add_argument("--model", default=None,
                     help="network name; its shipped weights must be the stage's")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=None, help="score at most N cutouts")
    p.add_argument("--plots", default=None, help="directory for ROC plots (PNG)")
    p.add_argument("--detector-data", default=None,
                   help="denoise stage: lens data on which to compare the shipped detector's "
                        "AUC on raw vs denoised cutouts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.labels is not None or args.inputs:
        return _evaluate_cutouts(args)
    if not (args.data and args.stage):
        raise SystemExit("lensray evaluate: give --labels LABELS --out DIR (observed cutouts), "
                         "or --data DIR --stage STAGE (one model on simulated data)")
    return _evaluate_model(args)


def _evaluate_cutouts(args: argparse.Namespace) -> int:
    import json
    import logging

    from pipeline._ray import ensure_ray
    from pipeline.evaluate import LENS_RATE, evaluate_cutouts

    if not args.out:
        raise SystemExit("lensray evaluate: --labels needs --out DIR")
    ensure_ray(log_to_driver=False, logging_level="ERROR")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        res = evaluate_cutouts(args.inputs, args.labels, args.out,
                               lens_rate=args.lens_rate or LENS_RATE,
                               progress=not args.no_progress, **_cascade_options(args))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensray evaluate: {exc}") from None
    print(json.dumps({k: res[k] for k in ("counts", "all", "groups")}, indent=2, default=str))
    print(f"metrics: {args.out}/metrics.json  roc: {res['roc']}  mistakes: {res['mistakes']}")
    return 0


def _evaluate_model(args: argparse.Namespace) -> int:
    import json

    from pipeline._ray import ensure_ray
    from pipeline.models import load_checkpoint, load_pretrained
    from pipeline.train.evaluate import denoiser_effect_on_detector, evaluate_model

    ensure_ray()
    if args.checkpoint:
        model, config = load_checkpoint(args.checkpoint)
    else:
        model, config = load_pretrained(args.stage)
        if args.model and args.model != config["model"]:
            raise SystemExit(f"shipped {args.stage} weights are {config['model']!r}, not "
                             f"{args.model!r}: pass --checkpoint DIR for other networks")
    if config["task"] != args.stage:
        raise SystemExit(f"{args.checkpoint}: checkpoint is for stage {config['task']!r}, "
                         f"not {args.stage!r}")
    res = evaluate_model(model, config, args.data, args.split, args.plots, args.limit)
    if args.detector_data and args.stage == DENOISE.name:
        det, det_cfg = load_pretrained(LENS_DETECT.name)
        res["detector"] = denoiser_effect_on_detector(model, config, det, det_cfg,
                                                      args.detector_data, args.split, args.limit)
    print(json.dumps(res, indent=2, default=str))
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
    from pipeline.io import CutoutReadError, ReadOptions, list_inputs, read_cutouts
    from pipeline.io.report import format_table, summarize

    try:  # bad paths and options fail here, before Ray starts
        ReadOptions(bands=args.bands, size=args.size)
        inputs = list_inputs(args.inputs)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensray read: {exc}") from None
    ensure_ray(log_to_driver=False, logging_level="ERROR")
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress bar instead
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = read_cutouts(inputs, bands=args.bands, size=args.size, strict=args.strict)
    try:
        rows, counts = summarize(ds, progress=not args.no_progress)
    except CutoutReadError as exc:  # --strict
        raise SystemExit(f"lensray read: {exc.unwrapped()}") from None
    print(format_table(rows, counts, args.limit))
    return 0


def _add_tile_inputs(p: argparse.ArgumentParser, required: bool) -> None:
    """Survey tiles and a source catalogue (``run --tiles``, ``cutout``)."""
    p.add_argument("--tiles", nargs="+", default=None, required=required, metavar="TILES",
                   help="FITS tiles with a WCS: files, globs or a pattern with {band}, e.g. "
                   "'tiles/*_{band}.fits' (quote it)")
    p.add_argument("--catalog", default=None, required=required,
                   help="source catalogue: Parquet, CSV or FITS table with id, RA, Dec")
    p.add_argument("--id-column", default=None, help="catalogue id column (default: id, ...)")
    p.add_argument("--ra-column", default=None, help="catalogue RA column, degrees (default: ra, ...)")
    p.add_argument("--dec-column", default=None, help="catalogue Dec column (default: dec, ...)")
    p.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                   help="catalogue columns to keep in the output (default: all)")
    p.add_argument("--max-nonfinite", type=float, default=0.1,
                   help="fraction of a cutout that may be NaN or off the tile (filled with the "
                   "band median); more makes an error row")


def _tile_plan(args: argparse.Namespace, size: int):
    """The tiles' plan (which tile cuts which source) from ``--tiles``, ``--catalog`` & co."""
    from pipeline.io import load_catalog, plan_tiles

    catalog = load_catalog(args.catalog, columns=args.columns, id_column=args.id_column,
                           ra_column=args.ra_column, dec_column=args.dec_column)
    return plan_tiles(args.tiles, catalog, size, args.bands, max_nonfinite=args.max_nonfinite)


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="FITS files, directories, globs or URIs (s3://, gs://)")
    _add_tile_inputs(p, required=False)
    p.add_argument("--demo", action="store_true",
                   help="simulate a small field (a few %% lenses) into OUT/demo-field and run on it")
    p.add_argument("--out", required=True, help="output dir (catalog/, errors/, summary.json, "
                   "gallery.png); rerunning with the same dir skips finished input files")
    _add_geometry(p)
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=float, default=0.5,
                     help="candidates: p_lens >= THRESHOLD go on to the substructure stage")
    cut.add_argument("--top-fraction", type=float, default=None,
                     help="candidates: this fraction of each batch by p_lens instead")
    p.add_argument("--batch-size", type=int, default=256,
                   help="rows per batch handed to a stage actor (the networks run them in "
                   "forward passes of 8 rows on CPU, 512 on a GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast the networks to bfloat16, faster on CPUs with "
                   "AVX512-BF16/AMX and on GPUs (same test metrics; single scores can move)")
    _add_models(p)
    p.add_argument("--gallery", type=int, default=16, help="top candidates to draw (0: none)")
    p.add_argument("--buffer-gib", type=float, default=None,
                   help="object-store memory the job may hold (default 0.125 GiB per CPU, >= 0.25)")
    p.add_argument("--demo-n", type=int, default=300, help="--demo: cutouts to simulate")
    p.add_argument("--seed", type=int, default=0, help="--demo: simulation seed")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_geometry(p: argparse.ArgumentParser) -> None:
    """What the reader takes from the files (``run`` and ``evaluate``)."""
    p.add_argument("--bands", nargs="+", default=None,
                   help="bands to read, e.g. VIS or g r i (default: all; each model then picks "
                   "its own bands by name)")
    p.add_argument("--size", type=int, default=None,
                   help="centre-crop/pad native cutouts to N x N before the models (default: "
                   "none; each model resamples and crops to its own size; --tiles: cut N x N, "
                   "default 64)")
    p.add_argument("--pixel-scale", type=float, default=None, metavar="ARCSEC",
                   help="arcsec/px of every input, instead of what the headers say (WCS, "
                   "PIXSCALE, CDELT); needed for files that say nothing")
    p.add_argument("--band-names", nargs="+", default=None, metavar="NAME",
                   help="names of the planes of files that name none, e.g. g r i z y")


def _add_models(p: argparse.ArgumentParser) -> None:
    """Which models run (``run`` and ``evaluate``)."""
    from pipeline.surveys import SURVEYS

    p.add_argument("--survey", default=None, choices=list(SURVEYS),
                   help="whose shipped models to run (default: chosen from the files' band "
                   "names, else euclid-vis; see docs/surveys.md)")
    p.add_argument("--stages", default=None,
                   help="comma-separated stages in order (default: every stage the survey "
                   "ships weights for or a --*-checkpoint names)")
    for stage in STAGES:
        p.add_argument(f"--{stage}-checkpoint", default=None, metavar="DIR",
                       help=f"{stage} checkpoint dir (default: the survey's shipped weights)")


def _cascade_options(args: argparse.Namespace) -> dict:
    """``run_cascade`` keywords of the options of :func:`_add_geometry` and :func:`_add_models`."""
    return dict(
        bands=args.bands, size=args.size, pixel_scale=args.pixel_scale,
        band_names=args.band_names, survey=args.survey,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None,
        checkpoints={s: getattr(args, f"{s.replace('-', '_')}_checkpoint") for s in STAGES
                     if getattr(args, f"{s.replace('-', '_')}_checkpoint")},
    )


def _run_run(args: argparse.Namespace) -> int:
    import json
    import logging

    from pipeline._ray import ensure_ray
    from pipeline.demo import run_demo
    from pipeline.run import run_cascade

    if sum((bool(args.inputs), args.demo, args.tiles is not None)) != 1:
        raise SystemExit("lensray run: give INPUT files/dirs, --tiles with --catalog, or --demo "
                         "(one of them)")
    if (args.tiles is None) != (args.catalog is None):
        raise SystemExit("lensray run: --tiles and --catalog go together")
    kwargs = dict(
        **_cascade_options(args), threshold=args.threshold,
        top_fraction=args.top_fraction, batch_size=args.batch_size, strict=args.strict,
        gallery=args.gallery, progress=not args.no_progress, buffer_gib=args.buffer_gib,
        precision=args.precision,
    )
    ensure_ray(log_to_driver=False, logging_level="ERROR")
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress bar instead
    try:  # bad options, checkpoints, inputs or a resumed --out with other options
        if args.demo:
            summary = run_demo(args.out, n=args.demo_n, seed=args.seed, **kwargs)
        elif args.tiles:
            summary = run_cascade(_tile_plan(args, args.size or 64), args.out, **kwargs)
        else:
            summary = run_cascade(args.inputs, args.out, **kwargs)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensray run: {exc}") from None
    print(json.dumps({k: summary[k] for k in ("inputs", "total", "throughput_rows_per_s",
                                             "timings_s") if k in summary}, indent=2))
    print(f"catalogue: {args.out}/catalog/  errors: {args.out}/errors/  "
          f"gallery: {summary.get('gallery', '-')}")
    return 0


def _add_cutout(p: argparse.ArgumentParser) -> None:
    _add_tile_inputs(p, required=True)
    p.add_argument("--out", required=True, help="output dir (shards/, errors/, summary.json); "
                   "rerunning with the same dir skips finished shards")
    p.add_argument("--bands", nargs="+", default=None, help="bands in order, e.g. VIS NIR_H")
    p.add_argument("--size", type=int, default=64, help="cutout side in pixels")
    p.add_argument("--shard-size", type=int, default=1000, help="cutouts per shard (at most)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_cutout(args: argparse.Namespace) -> int:
    import json

    from pipeline._ray import ensure_ray
    from pipeline.cutout import cut_tiles

    ensure_ray(log_to_driver=False, logging_level="ERROR")
    try:
        summary = cut_tiles(_tile_plan(args, args.size), args.out, shard_size=args.shard_size,
                            progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"lensray cutout: {exc}") from None
    print(json.dumps({k: summary[k] for k in ("units", "total", "throughput_rows_per_s")},
                     indent=2))
    print(f"shards: {args.out}/shards/  errors: {args.out}/errors/")
    return 0


COMMANDS: dict[str, tuple] = {
    "run": (_add_run, _run_run, "run the cascade (denoise, lens-detect, substructure) into a catalogue"),
    "read": (_add_read, _run_read, "read FITS cutouts on Ray and list them (id, ra, dec, shape, errors)"),
    "cutout": (_add_cutout, _run_cutout, "cut survey tiles around catalogue sources into cube shards"),
    "simulate": (_add_simulate, _run_simulate, "simulate labelled lens cutouts (FITS shards)"),
    "train": (_add_train, _run_train, "train a stage with Ray Train (safetensors + config out)"),
    "tune": (_add_tune, _run_tune, "search a stage's hyper-parameters with Ray Tune (ASHA)"),
    "evaluate": (_add_evaluate, _run_evaluate, "score the cascade on labelled cutouts (--labels), or a stage on simulated data (--data)"),
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
