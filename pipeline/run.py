"""The main job: cutouts in -> Denoise -> LensDetect -> Substructure -> catalogue out.

    run_cascade(["survey/*.fits"], "out/")      # = lensray run survey/*.fits --out out/

Lists the inputs once, streams the files that are not finished yet through
:meth:`pipeline.compose.Pipeline.run_files` (read, then the stages) and hands the ordered output
rows to a :class:`pipeline.io.CatalogStore`, which writes per input file (shard)::

    OUT/catalog/<shard>.parquet   good rows: id, ra, dec, source, index, pixel_scale, band_names,
                                  stage columns, resample_factor, survey, versions
    OUT/errors/<shard>.parquet    rows that could not be read or fitted to a model: id, source,
                                  index, error (the reason), kind (transient or permanent)
    OUT/_shards/<shard>.json      written last: the shard's row counts (errors by kind), its
                                  input's size and mtime, and whether it is finished
    OUT/_shards/_options.json     what the catalogue was computed with, written with the first
                                  finished shard (a rerun resuming finished shards must match)

Which models run: ``survey``'s shipped ones (``pipeline.surveys``), chosen from the inputs' band
names when not given (:func:`choose_survey`); each model stage fits every row to its own
bands, pixel scale and size.

then writes ``OUT/summary.json`` (counts of the whole catalogue on disk: rows in = catalogue +
errors, outputs of inputs not given this time, renamed ids; timings, throughput) and
``OUT/gallery.png`` (the top candidates of this run's inputs with their scores). ``OUT`` is a
local directory or a URI (``s3://``, ``gs://``), and it is owned (:class:`CatalogStore`:
foreign Parquet refused unless ``force``, stale outputs kept unless ``prune``, unique ids).

From survey tiles, ``inputs`` is a :class:`pipeline.io.tiles.TilePlan` instead of a listing: its
units (tiles) are the files, and its read tasks cut the cutouts (docs/architecture.md).

**Resumable.** Ray Data preserves row order here, so all rows of a file arrive together and the
store commits a file as soon as the next one begins (catalogue, errors, then the marker, each
written atomically). A rerun with the same ``OUT`` skips files that have a marker and rewrites
the others whole, so an interrupted run never leaves a duplicate or a half shard. A file whose
rows include transient errors (an unreachable endpoint, after ``attempts`` tries) is written but
not finished, and a file changed since its marker (a corrupt file replaced by a good one) is
read again: a rerun replaces their rows (docs/io.md, *Error kinds*).
**Fault tolerant.** Ray Data restarts dead stage actors and retries their batches (see
``pipeline.compose``); only whole, successful batches reach the driver.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from pipeline.io import schema

log = logging.getLogger(__name__)
SAMPLE_FILES = 4  # files read on the driver to choose a survey from their band names


def run_cascade(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    survey: str | None = None,
    pixel_scale: float | None = None,
    band_names: Sequence[str] | None = None,
    stages: Sequence[str] | Sequence[Any] | None = None,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    batch_size: int = 256,
    checkpoints: dict[str, str | os.PathLike | None] | None = None,
    strict: bool = False,
    gallery: int = 16,
    progress: bool = True,
    buffer_gib: float | None = None,
    fuse: bool | None = None,
    gpus: float | None = None,
    precision: str = "fp32",
    band_aliases: dict[str, str] | None = None,
    attempts: int = 3,
    force: bool = False,
    prune: bool = False,
    timings: dict[str, float] | None = None,
) -> dict:
    """Run the cascade over ``inputs`` and write catalogue, errors, summary and gallery to ``out``.

    Args:
        inputs: FITS files, directories, globs or URIs (see :func:`pipeline.io.read_cutouts`),
            or a :class:`pipeline.io.tiles.TilePlan` (tiles + a source catalogue, from
            :func:`pipeline.io.plan_tiles`), whose units (tiles) are then the files.
        out: output directory, local or a URI (``s3://bucket/out``, ``gs://...``; filesystem
            options in its query, ``?endpoint_override=host:port&scheme=http``); created, or
            resumed when it exists. It is owned (:class:`pipeline.io.CatalogStore`): Parquet
            in ``catalog/`` or ``errors/`` that it has no record of is refused (ValueError).
        bands, size: read only these bands / centre-crop native pixels to ``size`` (None:
            all bands, native shapes); each model stage then fits the rows to its checkpoint's
            bands, pixel scale and size (``pipeline.models.fit_rows``). A plan's own bands and
            size replace them (its cutouts carry no pixel scale: they must be the models').
        survey: whose shipped models to run (``pipeline.surveys``); None chooses from the band
            names of the first files (:func:`choose_survey`) or of the plan, falling back to
            the default.
        pixel_scale: arcsec/px of every input row, instead of what the headers say.
        band_names: names of the planes of files that name none (HSC cubes: g r i z y).
        stages: stage names in order (any of ``pipeline.models.STAGES``; None: every stage the
            survey ships weights for or ``checkpoints`` names), or ready Stage objects (your
            own included).
        threshold / top_fraction: the detector's candidate cut (see ``LensDetect``).
        batch_size: rows per model batch.
        checkpoints: stage name -> checkpoint directory, or a list of them (an ensemble);
            missing names use shipped weights. Every checkpoint is checked before any work.
        strict: stop at the first unreadable file instead of writing error rows.
        gallery: number of top candidates to draw in ``gallery.png`` (0: none).
        progress: show a progress bar.
        buffer_gib: object-store memory the streaming job may hold (blocks read ahead of the
            models, results waiting for the writer); default 0.125 GiB per cluster CPU, at
            least 0.25. Raise it for large multi-band cutouts (a block is one input file).
        fuse: run consecutive stages in one actor pool (None: when the cluster has no GPU;
            see ``pipeline.compose``).
        gpus: plan the model pools for this many GPUs, present or not yet (an autoscaling
            cluster whose GPU workers start at zero adds them); None: the GPUs present at start.
        precision: "fp32" or "bf16" (autocast) for the model stages built here.
        band_aliases: file band -> model band for bands that are the same under other names
            (``{"G": "VIS"}``; see ``pipeline.stages.ModelStage``).
        attempts: tries of a file read that fails transiently (network, timeout, permission),
            with a growing wait between them; a file still failing gets error rows of kind
            "transient" and is left unfinished, for the next run to retry.
        force: adopt Parquet files ``out`` has no record of into the catalogue instead.
        prune: delete the outputs of input files no longer given (default: keep them, counted
            in the summary's ``total`` and listed under ``inputs.stale``).
        timings: seconds of earlier steps of the same job to report with this run's
            (``run_demo``: the simulation); counted in ``total``.

    Returns:
        The summary (also written to ``out/summary.json``).
    """
    from pipeline import __version__
    from pipeline.compose import Pipeline
    from pipeline.io import CatalogStore, list_inputs
    from pipeline.io.catalog import CATALOG_DIR
    from pipeline.io.outdir import OutDir
    from pipeline.io.tiles import TilePlan
    from pipeline.stages import Stage, build_stages, check_bands
    from pipeline.surveys import get_survey

    t0 = time.perf_counter()
    if buffer_gib is not None and not buffer_gib > 0:
        raise ValueError(f"buffer_gib must be > 0, got {buffer_gib}")
    read = {"bands": list(bands) if bands is not None else None, "size": size,
            "pixel_scale": pixel_scale,
            "band_names": list(band_names) if band_names is not None else None}
    _read_options({**read, "attempts": attempts})  # bad options fail before any work
    out = OutDir(out)
    plan = inputs if isinstance(inputs, TilePlan) else None
    if plan is not None:  # the plan's units (tiles) are the files; its bands and size rule
        listed, files = None, list(plan.units)
        read.update(bands=list(plan.bands), size=plan.size)
    else:
        listed = list_inputs(inputs)  # the one listing of this run (sizes included)
        files = list(listed.files)
    if len(set(files)) != len(files):
        raise ValueError("the same input file is listed twice: " +
                         ", ".join(sorted({f for f in files if files.count(f) > 1})))
    if stages and all(isinstance(s, Stage) for s in stages):
        stage_objs, chosen = list(stages), None
    else:
        chosen = ({"name": get_survey(survey).name, "by": "--survey"} if survey
                  else choose_survey(listed, _read_options(read)) if plan is None
                  else vote_survey([{",".join(plan.bands)}], "the tiles"))
        stage_objs = build_stages(stages, survey=chosen["name"], threshold=threshold,
                                  top_fraction=top_fraction, batch_size=batch_size,
                                  checkpoints=checkpoints, precision=precision,
                                  band_aliases=band_aliases)
    check_bands(stage_objs, read["bands"])  # --bands the models do not take: before any work
    pipeline = Pipeline(stage_objs, fuse=fuse, gpus=gpus)
    store = CatalogStore(out, files, force=force, prune=prune,
                         stamps=listed.stamps() if listed is not None else None)
    store.check_options({**_options_spec(stage_objs, read),
                         **(plan.spec if plan is not None else {})})

    t_cascade = time.perf_counter()
    if store.pending:
        todo = store.pending if plan is not None else listed.subset(store.pending)
        _stream(pipeline, todo, store, read=read, strict=strict, progress=progress,
                buffer_gib=buffer_gib, plan=plan, attempts=attempts)
    t_written = time.perf_counter()

    total = store.totals()
    this_run = store.counts()
    unfinished = store.unfinished()
    if unfinished:
        log.warning("%d file(s) had transient read errors (%s...): their rows are in errors/, "
                    "and the next run with the same --out reads them again", len(unfinished),
                    unfinished[0])
    summary = {
        "lensray_version": __version__,
        "inputs": {"files": len(files), "skipped_finished": len(files) - len(store.pending),
                   "processed": len(store.done), "empty": sorted(store.empty),
                   "unfinished": unfinished,  # transient errors: the next run retries them
                   # outputs on disk of inputs not given this time (counted in total)
                   "stale": _file_sets(store.stale), "pruned": len(store.pruned),
                   "adopted": sorted(f for m in store.adopted.values() for f in m["adopted"])},
        "this_run": this_run,
        "total": total,  # rows = cutouts: good + errors (= transient + permanent)
        "adds_up": total["rows"] == total["good"] + total["errors"]
        == total["catalog_parquet_rows"] + total["errors_parquet_rows"],
        "survey": chosen,
        "read": read,  # how the files were read (gallery and evaluation re-read cutouts so)
        "geometry": first_model(stage_objs),  # what the first model takes
        "stages": [{"stage": type(s).__name__, "options": s.options, "batch_size": s.batch_size}
                   for s in stage_objs],
        "models": store.models,
        "timings_s": {**(timings or {}), "setup": round(t_cascade - t0, 3),
                      "cascade": round(t_written - t_cascade, 3)},
        "throughput_rows_per_s": round(this_run["rows"] / max(t_written - t_cascade, 1e-9), 1),
    }
    if not summary["adds_up"]:
        raise RuntimeError(f"{out.show()}: row counts do not add up: {summary['total']}")
    if gallery:
        from pipeline.gallery import top_candidates, write_gallery

        t_g = time.perf_counter()
        rows = top_candidates(out.sub(CATALOG_DIR), gallery, keys=list(store.keys.values()))
        images = plan.cutouts([r[schema.INDEX] for r in rows]) if plan is not None else None
        out.write(GALLERY, lambda f: write_gallery(
            rows, f, read=read, fit_to=summary["geometry"], images=images,
            filesystem=listed.filesystem if listed is not None else None))
        summary["gallery"] = out.show(GALLERY)
        summary["timings_s"]["gallery"] = round(time.perf_counter() - t_g, 3)
    elif out.exists(GALLERY):  # not redrawn: say so rather than pass it off as this catalogue's
        summary["gallery"] = f"{out.show(GALLERY)} (from an earlier run, not redrawn)"
    summary["timings_s"]["total"] = round(time.perf_counter() - t0 + sum((timings or {}).values()), 3)
    out.write_json("summary.json", summary)
    return summary


GALLERY = "gallery.png"


def _file_sets(markers: dict[str, dict]) -> dict:
    """Count of the file sets ``markers`` (key -> marker) and their rows."""
    return {"files": len(markers), "rows": sum(m.get("rows", 0) for m in markers.values()),
            "sources": sorted(m.get("source") or k for k, m in markers.items())[:20]}


def first_model(stages) -> dict | None:
    """The geometry and task of the first model stage (what the gallery fits cutouts to)."""
    model = next((s for s in stages if getattr(s, "geometry", None)), None)
    return {**model.geometry, "task": model.task} if model is not None else None


def _read_options(read: dict):
    """The reader options of a run's ``read`` settings, with each row's geometry."""
    from pipeline.io import ReadOptions

    return ReadOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in read.items()},
                       geometry=True)


def choose_survey(inputs, options=None) -> dict:
    """The survey whose models suit ``inputs`` (:class:`pipeline.io.Inputs`), from the band
    names of the first :data:`SAMPLE_FILES` files (read here, on the driver, with the reader's
    ``options``): the survey most of them name (``pipeline.surveys.survey_for_bands``), else
    the default survey. Logs and returns ``{"name": ..., "by": why}``."""
    from pipeline.io import ReadOptions, read_fits_file

    options = options or ReadOptions(geometry=True)
    sample = list(inputs.files[:SAMPLE_FILES])
    named = []
    for path in sample:
        rows = read_fits_file(path, options, inputs.filesystem)
        named.append({n for n, e in zip(rows[schema.BAND_NAMES], rows[schema.ERROR], strict=True)
                      if n and e is None})
    return vote_survey(named, f"the first {len(sample)} input files")


def vote_survey(named: list[set[str]], what: str) -> dict:
    """The survey most of ``what`` (one set of "g,r,i" band lists each) name
    (``pipeline.surveys.survey_for_bands``), else the default survey, and why (logged)."""
    from collections import Counter

    from pipeline.surveys import DEFAULT_SURVEY, SURVEYS, get_survey, survey_for_bands

    votes: Counter = Counter()
    for names in named:
        votes.update({s.name for s in map(survey_for_bands, (n.split(",") for n in names)) if s})
    if votes:
        order = list(SURVEYS)
        name = max(votes, key=lambda k: (votes[k], -order.index(k)))
        why = (f"survey {name}: the band names of {votes[name]} of {what} are its "
               f"({', '.join(get_survey(name).bands)}); pass --survey to choose")
        log.info(why)
    else:
        name = DEFAULT_SURVEY
        every = sorted(set().union(*named)) if named else []
        has = f"band names {', '.join(every)}" if every else "no band names"
        why = (f"survey {name} (the default): {what} have {has}, none of a known survey; "
               f"pass --survey NAME (known: {', '.join(SURVEYS)})")
        log.warning(why)
    return {"name": name, "by": why}


def _stream(pipeline, inputs, store, *, read, strict, progress, buffer_gib,
            plan=None, attempts=3) -> None:
    """Read ``inputs`` (or cut the tiles ``inputs`` of ``plan``), run the stages and hand every
    output block to ``store``, in order."""
    from tqdm import tqdm

    from pipeline._ray import ensure_ray
    from pipeline.io import CutoutReadError

    ray = ensure_ray()
    ctx = ray.data.DataContext.get_current()
    options = ctx.execution_options
    saved = options.preserve_order, options.resource_limits, ctx.enable_progress_bars
    # Order keeps each file's rows together, which is what lets us commit files one by one.
    options.preserve_order = True
    if buffer_gib is None:
        buffer_gib = max(0.25, 0.125 * ray.cluster_resources().get("CPU", 1))
    options.resource_limits = options.resource_limits.copy(object_store_memory=buffer_gib * 2**30)
    ctx.enable_progress_bars = False  # one bar of our own below
    try:
        if plan is not None:
            ds = pipeline.run(plan.dataset(inputs, strict=strict),
                              drop=[schema.IMAGE, schema.DENOISED, schema.IMAGE_SCALE])
        else:
            ds = pipeline.run_files(inputs, **read, strict=strict, attempts=attempts,
                                    drop=[schema.IMAGE, schema.DENOISED, schema.IMAGE_SCALE])
        bar = tqdm(total=len(inputs), unit="file", disable=not progress, dynamic_ncols=True,
                   desc="cascade")
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            before = len(store.done)
            store.add(table)
            bar.update(len(store.done) - before)
            bar.set_postfix(rows=store.rows_seen, candidates=store.candidates_seen)
        before = len(store.done)
        store.close()
        bar.update(len(store.done) - before)
        bar.close()
    except CutoutReadError as exc:  # strict: the file and reason, not Ray's remote traceback
        raise exc.unwrapped() from None
    finally:
        options.preserve_order, options.resource_limits, ctx.enable_progress_bars = saved


def _options_spec(stages, read: dict) -> dict:
    """What decides the catalogue's values, one key per setting ("LensDetect.threshold"): the
    stages in order with their options (survey, checkpoint...) and the ``read`` settings
    (bands, size, pixel scale, band names; not the device; the batch size only where a
    per-batch top fraction makes it count)."""
    names = [type(s).__name__ for s in stages]
    spec = {**read, "stages": ",".join(names)}
    for i, (name, stage) in enumerate(zip(names, stages, strict=True)):
        label = name if names.count(name) == 1 else f"{name}#{i + 1}"  # chained denoisers
        opts = {k: v for k, v in stage.options.items() if k != "device"}
        if opts.get("top_fraction") is not None:
            opts["batch_size"] = stage.batch_size
        spec.update({f"{label}.{k}": v for k, v in opts.items()})
    return spec
