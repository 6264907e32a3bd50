"""The ``lensray`` command: one entry point, one sub-command per job.

Each sub-command is a pair ``_add_<name>(parser)`` / ``_run_<name>(args)`` registered in
``COMMANDS``; the work itself lives in the package, so the CLI, ``jobs/`` and users' Python
all call the same functions. Heavy imports happen inside ``_run_*`` to keep ``--help`` fast.

One behaviour for every sub-command (:func:`main`): a problem is one line on stderr,
``lensray <cmd>: ...``, with exit status 2 for a wrong use of the options (:class:`UsageError`,
argparse's own errors) and 1 for a failure (bad input, a crash: the full traceback only with
``-v``); ``--json`` makes stdout one JSON document (``run``, ``read``, ``evaluate``,
``simulate``); Ray's logs stay hidden unless ``-v``.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.models.tasks import DENOISE, LENS_DETECT, STAGES
from pipeline.precision import PRECISIONS


class UsageError(SystemExit):
    """A wrong use of the options: one line, exit status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _names(text: str) -> list[str]:
    """``"g,r,i"`` -> ``["g", "r", "i"]``: list options take one comma-separated argument, so
    they never swallow the INPUT that follows them."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _add_names(p: argparse.ArgumentParser, flag: str, help_: str, **kw) -> None:
    """A list option (``--bands VIS,NIR_H``; repeating it adds to the list)."""
    p.add_argument(flag, type=_names, action="extend", default=None, help=help_, **kw)


def _print_json(data) -> None:
    """``data`` as strict JSON (NaN and infinities as null, which every JSON reader takes)."""
    print(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(data):
    if type(data).__module__ == "numpy" and getattr(data, "ndim", None) == 0:
        data = data.item()  # a NumPy scalar
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


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
    _add_names(p, "--bands", "--backgrounds: bands to read by name, in the preset's order "
               "(comma-separated)")
    p.add_argument("--arc-snr", default="10,200", metavar="LO,HI",
                   help="--backgrounds: injected arc S/N, log-uniform (default 10,200)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=LO,HI",
                   help="override a prior, e.g. theta_e=0.8,2.5 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_json(p)


def _run_simulate(args: argparse.Namespace) -> int:
    import os

    from pipeline.simulate import PRESETS, simulate
    from pipeline.simulate.priors import parse_prior_overrides

    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: unknown (known: {', '.join(PRESETS)})")
    if os.path.exists(os.path.join(args.out, "manifest.json")) and not args.overwrite:
        raise UsageError(f"--out {args.out}: holds a simulated set already (pass --overwrite "
                         "to replace it)")
    try:
        splits = [float(x) for x in args.splits.split(",")]
        arc_snr = tuple(float(x) for x in args.arc_snr.split(","))
    except ValueError as exc:
        raise UsageError(f"--splits/--arc-snr: {exc}") from None
    if args.backgrounds:
        from pipeline.simulate.inject import simulate_injections

        if args.task != "lens":
            raise UsageError("--backgrounds makes lens-task sets (--task lens)")
        m = simulate_injections(
            args.preset, args.backgrounds, args.out, args.seed, bands=args.bands, size=args.size,
            priors=parse_prior_overrides(args.prior) or None,
            snr_range=arc_snr, split_fractions=splits,
            sources=args.sources, overwrite=args.overwrite, progress=not args.no_progress)
        _say(args, m, f"wrote {m['n']} images ({m['counts']['injected']} backgrounds with and "
             f"without arcs) to {args.out}; {len(m['skipped'])} cutouts skipped (see manifest.json)")
        return 0
    if args.n is None:
        raise UsageError("--n is required (or --backgrounds)")
    manifest = simulate(
        args.preset, args.task, args.n, args.seed, args.out, size=args.size,
        priors=parse_prior_overrides(args.prior) or None, shard_size=args.shard_size,
        split_fractions=splits, clean=args.clean,
        backend=args.backend, matched=args.matched, sources=args.sources,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    counts = ", ".join(f"{k}={v['n']}" for k, v in manifest["splits"].items())
    _say(args, manifest, f"wrote {manifest['n']} images ({counts}) to {args.out}; classes "
         f"{manifest['counts']}")
    return 0


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="stdout: one JSON document and nothing else (e.g. for jq)")


def _say(args: argparse.Namespace, data, text: str) -> None:
    """``data`` as JSON on stdout with ``--json``, else ``text``."""
    if args.json:
        _print_json(data)
    else:
        print(text)


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
    p.add_argument("--denoiser", default=None, metavar="DIR|survey:NAME",
                   help="train and test on this denoiser's output, the input the cascade gives a "
                   "model after its denoise stage (e.g. survey:euclid-vis: the shipped one)")
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
    keys = ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed", "threads",
            "max_minutes", "init", "regression_weight", "nll_beta", "train_classes", "precision",
            "denoiser")
    overrides = {}
    for item in args.model_arg:
        key, sep, val = item.partition("=")
        if not sep:
            raise UsageError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    extra = {}
    if args.augment:
        try:
            extra["augment"] = json.loads(args.augment)
        except json.JSONDecodeError as e:
            raise UsageError(f"--augment {args.augment!r}: not JSON ({e})") from None
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
    p.add_argument("--adapt-align", choices=("all", "negatives"), default=None,
                   help="with --adapt: align the survey's features with all training cutouts "
                        "(DANN; default) or with the non-lenses only (class-conditional: a "
                        "survey is almost all non-lenses)")


def _run_train(args: argparse.Namespace) -> int:
    import shlex

    from pipeline.train.loop import train

    adapt = {k: v for k in ("adapt", "adapt_weight", "adapt_align")
             if (v := getattr(args, k)) is not None}
    out = train(args.stage, args.data, args.out, args.model, num_workers=args.num_workers,
                use_gpu=args.use_gpu, recipe_command="lensray " + shlex.join(sys.argv[1:]),
                **_recipe(args), **adapt)
    cfg = json.loads((out / "config.json").read_text())
    _print_json({"checkpoint": str(out), "metrics": cfg.get("metrics")})
    return 0


def _add_tune(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    p.add_argument("--num-samples", type=int, default=8, help="trials")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before pruning")


def _run_tune(args: argparse.Namespace) -> int:
    from pipeline.train.tune import tune_stage

    recipe = _recipe(args)
    overrides = recipe.pop("model_overrides")
    out, trials = tune_stage(args.stage, args.data, args.out, args.model,
                             num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                             grace_period=args.grace_period, model_overrides=overrides, **recipe)
    cfg = json.loads((out / "config.json").read_text())
    _print_json({"checkpoint": str(out), "trials": trials, "metrics": cfg.get("metrics")})
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
    _add_json(p)


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.labels is not None or args.inputs:
        return _evaluate_cutouts(args)
    if not (args.data and args.stage):
        raise UsageError("give --labels LABELS --out DIR (observed cutouts), "
                         "or --data DIR --stage STAGE (one model on simulated data)")
    return _evaluate_model(args)


def _evaluate_cutouts(args: argparse.Namespace) -> int:
    from pipeline._ray import ensure_ray
    from pipeline.evaluate import LENS_RATE, evaluate_cutouts

    if not args.out:
        raise UsageError("--labels needs --out DIR")
    ensure_ray()
    res = evaluate_cutouts(args.inputs, args.labels, args.out,
                           lens_rate=args.lens_rate or LENS_RATE,
                           progress=not args.no_progress, **_cascade_options(args))
    metrics = {k: res[k] for k in ("counts", "all", "groups")}
    if args.json:
        _print_json({**metrics, "metrics": f"{args.out}/metrics.json", "roc": res["roc"],
                     "mistakes": res["mistakes"]})
    else:
        _print_json(metrics)
        print(f"metrics: {args.out}/metrics.json  roc: {res['roc']}  mistakes: {res['mistakes']}")
    return 0


def _evaluate_model(args: argparse.Namespace) -> int:
    from pipeline._ray import ensure_ray
    from pipeline.models import load_checkpoint, load_pretrained
    from pipeline.train.evaluate import denoiser_effect_on_detector, evaluate_model

    # a bad checkpoint is one line (main() prints it), before Ray starts
    model, config = (load_checkpoint(args.checkpoint, task=args.stage) if args.checkpoint
                     else load_pretrained(args.stage))
    if not args.checkpoint and args.model and args.model != config["model"]:
        raise UsageError(f"shipped {args.stage} weights are {config['model']!r}, not "
                         f"{args.model!r}: pass --checkpoint DIR for other networks")
    ensure_ray()
    res = evaluate_model(model, config, args.data, args.split, args.plots, args.limit)
    if args.detector_data and args.stage == DENOISE.name:
        det, det_cfg = load_pretrained(LENS_DETECT.name)
        res["detector"] = denoiser_effect_on_detector(model, config, det, det_cfg,
                                                      args.detector_data, args.split, args.limit)
    _print_json(res)
    return 0


def _add_read(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="FITS files, directories, globs or URIs (s3://, gs://)")
    _add_names(p, "--bands", "bands to read, comma-separated, e.g. VIS,NIR_H (default: all)")
    p.add_argument("--size", type=int, default=None, help="centre-crop/pad cutouts to N x N")
    p.add_argument("--limit", type=int, default=50,
                   help="show at most K rows (counts cover all; --json: all rows)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    _add_attempts(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_json(p)


def _add_attempts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attempts", type=int, default=3,
                   help="tries of a file read that fails transiently (network, timeout, "
                   "permission) before its rows become transient errors (default: 3)")


def _run_read(args: argparse.Namespace) -> int:
    from pipeline._ray import ensure_ray
    from pipeline.io import CutoutReadError, ReadOptions, read_cutouts
    from pipeline.io.report import format_table, summarize

    ReadOptions(bands=args.bands, size=args.size, attempts=args.attempts)  # before Ray
    inputs = _list_inputs(args.inputs)
    ray = ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar instead
    ds = read_cutouts(inputs, bands=args.bands, size=args.size, strict=args.strict,
                      attempts=args.attempts)
    try:
        rows, counts = summarize(ds, progress=not args.no_progress)
    except CutoutReadError as exc:  # --strict
        raise exc.unwrapped() from None
    if args.json:
        _print_json({"counts": counts, "rows": rows})
    else:
        print(format_table(rows, counts, args.limit))
    return 0


def _list_inputs(paths: list[str]):
    """The INPUT arguments listed (:func:`pipeline.io.list_inputs`); an INPUT that does not
    exist and looks like a band name is most likely a list option written with spaces."""
    import os

    from pipeline.io import list_inputs

    for path in paths:
        if "://" not in path and not os.path.exists(path) and not any(c in path for c in "*?[./"):
            raise UsageError(f"INPUT {path!r} does not exist (list options take one "
                             "comma-separated argument: --bands g,r,i)")
    return list_inputs(paths)


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
    _add_names(p, "--columns", "catalogue columns to keep in the output, comma-separated "
               "(default: all)", metavar="COLUMN")
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
    p.add_argument("--out", required=True, help="output dir or URI (s3://bucket/out, gs://...; "
                   "endpoint options in the URI's query, docs/io.md): catalog/, errors/, "
                   "summary.json, gallery.png; rerunning with the same dir skips finished input "
                   "files")
    p.add_argument("--force", action="store_true",
                   help="adopt Parquet files in OUT/catalog or OUT/errors that this output "
                   "directory has no record of (default: refuse them)")
    p.add_argument("--prune", action="store_true",
                   help="delete the outputs of input files not given this time (default: keep "
                   "them; the summary counts them)")
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
    p.add_argument("--gpus", type=float, default=None, metavar="N",
                   help="plan the model pools for N GPUs even if the cluster has none yet (an "
                   "autoscaling cluster whose GPU workers start at zero adds them; elsewhere the "
                   "run waits for them); default: the GPUs present when the run starts")
    p.add_argument("--buffer-gib", type=float, default=None,
                   help="object-store memory the job may hold (default 0.125 GiB per CPU, >= 0.25)")
    p.add_argument("--demo-n", type=int, default=300, help="--demo: cutouts to simulate")
    p.add_argument("--seed", type=int, default=0, help="--demo: simulation seed")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    _add_attempts(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_json(p)


def _add_geometry(p: argparse.ArgumentParser) -> None:
    """What the reader takes from the files (``run`` and ``evaluate``)."""
    _add_names(p, "--bands", "bands to read, comma-separated, e.g. VIS or g,r,i (default: all; "
               "each model then picks its own bands by name)")
    p.add_argument("--size", type=int, default=None,
                   help="centre-crop/pad native cutouts to N x N before the models (default: "
                   "none; each model resamples and crops to its own size; --tiles: cut N x N, "
                   "default 64)")
    p.add_argument("--pixel-scale", type=float, default=None, metavar="ARCSEC",
                   help="arcsec/px of every input, instead of what the headers say (WCS, "
                   "PIXSCALE, CDELT); needed for files that say nothing")
    _add_names(p, "--band-names", "names of the planes of files that name none, "
               "comma-separated, e.g. g,r,i,z,y", metavar="NAMES")


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
        # one DIR per option (append), so a member can never swallow the INPUTs after it
        p.add_argument(f"--{stage}-checkpoint", action="append", default=None, metavar="DIR",
                       help=f"{stage} checkpoint dir (default: the survey's shipped weights); "
                       "repeat the option for an ensemble (mean of the members" +
                       (", and p_lens_std, their spread)" if stage == LENS_DETECT.name else ")"))
    p.add_argument("--band-alias", action="append", default=[], metavar="FILE=MODEL",
                   help="treat the files' band FILE as the models' band MODEL, e.g. G=VIS, when "
                   "they are the same band under another name (repeatable); without it --bands "
                   "that the models do not take is an error")


def _cascade_options(args: argparse.Namespace) -> dict:
    """``run_cascade`` keywords of the options of :func:`_add_geometry` and :func:`_add_models`."""
    from pathlib import Path

    from pipeline.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    for item in args.inputs:  # `--lens-detect-checkpoint A B`: B is an INPUT, not a member
        if all((Path(item) / f).is_file() for f in (WEIGHTS_FILE, CONFIG_FILE)):
            raise SystemExit(f"lensray {args.command}: {item}: a checkpoint among the INPUTs "
                             "(give each ensemble member its own --<stage>-checkpoint DIR)")
    aliases = {}
    for item in args.band_alias:
        file_band, sep, model_band = item.partition("=")
        if not (sep and file_band.strip() and model_band.strip()):
            raise SystemExit(f"lensray {args.command}: --band-alias {item!r}: expected FILE=MODEL")
        aliases[file_band.strip()] = model_band.strip()
    return dict(
        bands=args.bands, size=args.size, pixel_scale=args.pixel_scale,
        band_names=args.band_names, survey=args.survey,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None,
        checkpoints={s: getattr(args, f"{s.replace('-', '_')}_checkpoint") for s in STAGES
                     if getattr(args, f"{s.replace('-', '_')}_checkpoint")},
        band_aliases=aliases or None,
    )


def _run_run(args: argparse.Namespace) -> int:
    from pipeline.demo import MIN_N, run_demo
    from pipeline.run import run_cascade

    if sum((bool(args.inputs), args.demo, args.tiles is not None)) != 1:
        raise UsageError("give INPUT files/dirs, --tiles with --catalog, or --demo (one of them)")
    if (args.tiles is None) != (args.catalog is None):
        raise UsageError("--tiles and --catalog go together")
    if args.demo and args.demo_n < MIN_N:
        raise UsageError(f"--demo-n must be at least {MIN_N}, got {args.demo_n}")
    kwargs = dict(
        **_cascade_options(args), threshold=args.threshold,
        top_fraction=args.top_fraction, batch_size=args.batch_size, strict=args.strict,
        gallery=args.gallery, progress=not args.no_progress, buffer_gib=args.buffer_gib,
        gpus=args.gpus, precision=args.precision, attempts=args.attempts,
        force=args.force, prune=args.prune,
    )
    inputs = _list_inputs(args.inputs) if args.inputs else None
    if args.demo:
        summary = run_demo(args.out, n=args.demo_n, seed=args.seed, **kwargs)
    elif args.tiles:
        summary = run_cascade(_tile_plan(args, args.size or 64), args.out, **kwargs)
    else:
        summary = run_cascade(inputs, args.out, **kwargs)
    if args.json:
        _print_json(summary)
        return 0
    files, total = summary["inputs"], summary["total"]
    print(f"{files['files']} input files ({files['processed']} processed, "
          f"{files['skipped_finished']} finished before); the catalogue holds {total['rows']} "
          f"rows: {total['good']} good ({total['candidates']} candidates), {total['errors']} "
          f"errors; {summary['throughput_rows_per_s']} rows/s, {summary['timings_s']['total']} s")
    if files["stale"]["files"]:
        print(f"{files['stale']['files']} files' outputs ({files['stale']['rows']} rows) are of "
              "inputs not given this time: kept and counted (--prune deletes them)")
    if total.get("ids_renamed"):
        print(f"{total['ids_renamed']} duplicate ids renamed with a ~N suffix (docs/io.md)")
    out = args.out.split("?", 1)[0].rstrip("/")
    print(f"catalogue: {out}/catalog/  errors: {out}/errors/  summary: {out}/summary.json  "
          f"gallery: {summary.get('gallery', '-')}")
    return 0


def _add_cutout(p: argparse.ArgumentParser) -> None:
    _add_tile_inputs(p, required=True)
    p.add_argument("--out", required=True, help="output dir (shards/, errors/, summary.json); "
                   "rerunning with the same dir skips finished shards")
    _add_names(p, "--bands", "bands in order, comma-separated, e.g. VIS,NIR_H")
    p.add_argument("--size", type=int, default=64, help="cutout side in pixels")
    p.add_argument("--shard-size", type=int, default=1000, help="cutouts per shard (at most)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_cutout(args: argparse.Namespace) -> int:
    from pipeline._ray import ensure_ray
    from pipeline.cutout import cut_tiles

    ensure_ray()
    summary = cut_tiles(_tile_plan(args, args.size), args.out, shard_size=args.shard_size,
                        progress=not args.no_progress)
    _print_json({k: summary[k] for k in ("units", "total", "throughput_rows_per_s")})
    print(f"shards: {args.out}/shards/  errors: {args.out}/errors/")
    return 0


def _add_mine(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `lensray run` output directory")
    p.add_argument("--top", type=int, required=True, metavar="K",
                   help="take the K highest-p_lens cutouts of the run")
    p.add_argument("--out", required=True, help="new training-set dir ({train,val}/*.fits + "
                   "manifest.json) for `lensray train --data OUT`")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="your grading: CSV/Parquet (source,label) or lens/ + nonlens/ folders "
                   "(docs/surveys.md); rows it calls lenses get is_lens=1, every other row 0")
    p.add_argument("--only-labelled", action="store_true",
                   help="keep only the rows --labels names (default: unnamed rows are non-lenses)")
    p.add_argument("--base", default=None, metavar="DATA",
                   help="the training set of the previous round, linked into OUT (its test "
                   "split stays the test split)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the mined rows for validation (by a hash of the id)")
    p.add_argument("--store-options", default=None, metavar="QUERY",
                   help="the store options the run's URI inputs had in their query, e.g. "
                   "'endpoint_override=host:9000&scheme=http' (runs do not record them)")


def _run_mine(args: argparse.Namespace) -> int:
    from pipeline.mine import mine

    manifest = mine(args.run_dir, args.out, top=args.top, labels=args.labels,
                    only_labelled=args.only_labelled, base=args.base,
                    val_fraction=args.val_fraction, store_options=args.store_options)
    _print_json({k: manifest[k] for k in ("n", "counts", "base", "adds_up")})
    for rid, source, why in manifest["skipped"]:
        print(f"lensray mine: skipped {rid} ({source}): {why}", file=sys.stderr)
    return 0


COMMANDS: dict[str, tuple] = {
    "run": (_add_run, _run_run, "run the cascade (lens-detect, substructure; the denoiser when a model reads its output) into a catalogue"),
    "read": (_add_read, _run_read, "read FITS cutouts on Ray and list them (id, ra, dec, shape, errors)"),
    "cutout": (_add_cutout, _run_cutout, "cut survey tiles around catalogue sources into cube shards"),
    "simulate": (_add_simulate, _run_simulate, "simulate labelled lens cutouts (FITS shards)"),
    "train": (_add_train, _run_train, "train a stage with Ray Train (safetensors + config out)"),
    "tune": (_add_tune, _run_tune, "search a stage's hyper-parameters with Ray Tune (ASHA)"),
    "mine": (_add_mine, _run_mine, "turn a run's top-scored cutouts, graded, into the next round's training set"),
    "evaluate": (_add_evaluate, _run_evaluate, "score the cascade on labelled cutouts (--labels), or a stage on simulated data (--data)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lensray run: the problem (--help: usage)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has one its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in help_:
            return help_
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = _Parser(prog="lensray", description="Survey-scale strong-lens pipeline on Ray.")
    parser.add_argument("--version", action="version", version=f"lensray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Help)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show Ray's logs, and the full traceback of a failure")
        add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command: a problem raises SystemExit with one line
    ``lensray <cmd>: ...`` (status 2: wrong options, :class:`UsageError`; 1: a failure; the
    traceback is printed first with ``-v``)."""
    args = build_parser().parse_args(argv)
    prog = f"lensray {args.command}"
    _add, run, _help = COMMANDS[args.command]
    from pipeline import _ray

    _ray.set_verbose(args.verbose)
    try:
        return int(run(args) or 0)
    except UsageError as exc:
        print(f"{prog}: {exc} (see {prog} --help)", file=sys.stderr)
        raise UsageError(f"{prog}: {exc}") from None
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise SystemExit(f"{prog}: interrupted") from None
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        if args.verbose:
            import traceback

            traceback.print_exc()
        raise SystemExit(f"{prog}: {_one_line(exc, args.verbose)}") from None


# Failures that describe themselves (bad input, options, storage); any other exception is a
# crash, and its line says so.
_EXPECTED = (OSError, ValueError, RuntimeError)


def _one_line(exc: BaseException, verbose: bool) -> str:
    """The one line that stands for ``exc``: its message (the cause of a Ray task error), or,
    for an unexpected exception, its type and message and where to see more."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the worker's exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    if isinstance(exc, _EXPECTED) and lines:
        return text
    hint = "" if verbose else " (rerun with -v for the traceback)"
    return f"{type(exc).__name__}: {text}{hint}"


if __name__ == "__main__":
    sys.exit(main())
