"""The main job: cutouts in -> Denoise -> LensDetect -> Substructure -> catalogue out.

    run_cascade(["survey/*.fits"], "out/")      # = lensray run survey/*.fits --out out/

Streams the files through :meth:`pipeline.compose.Pipeline.run_files` (read, then the stages)
and writes, per input shard (file)::

    OUT/catalog/<shard>.parquet   good rows: id, ra, dec, source, index, stage columns, versions
    OUT/errors/<shard>.parquet    rows that could not be read, with the reason
    OUT/_shards/<shard>.json      written last: the shard is finished (row counts)
    OUT/_shards/_options.json     what the catalogue was computed with (a rerun must match)
    OUT/summary.json              counts (rows in = catalogue + errors), timings, throughput
    OUT/gallery.png               the top candidates with their scores

**Resumable.** Ray Data preserves row order here, so all rows of a file arrive together and the
driver commits a file as soon as the next one begins (catalogue, errors, then the marker, each
written atomically). A rerun with the same ``OUT`` skips files that have a marker and rewrites
the others whole, so an interrupted run never leaves a duplicate or a half shard.
**Fault tolerant.** Ray Data restarts dead stage actors and retries their batches (see
``pipeline.compose``); only whole, successful batches reach the driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.io import schema

STAGE_NAMES = ("denoise", "lens-detect", "substructure")
CATALOG, ERRORS, SHARDS = "catalog", "errors", "_shards"


def shard_key(source: str) -> str:
    """File name (without extension) for one input file's output: readable and unique."""
    stem = re.sub(r"\.(fits?|fts)(\.(gz|fz|bz2))?$", "", source.rstrip("/").rsplit("/", 1)[-1],
                  flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "shard"
    return f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def build_stages(
    stages: Sequence[str] = STAGE_NAMES,
    *,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    batch_size: int = 256,
    checkpoints: dict[str, str | os.PathLike | None] | None = None,
    precision: str = "fp32",
) -> list:
    """Stage specs for the named stages (validated now: bad checkpoints fail before any work)."""
    from pipeline.stages import Denoise, LensDetect, Substructure

    checkpoints = checkpoints or {}
    unknown = set(stages) - set(STAGE_NAMES) or set(checkpoints) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)} (known: {', '.join(STAGE_NAMES)})")
    common = dict(batch_size=batch_size, precision=precision)
    make = {
        "denoise": lambda ck: Denoise(ck, **common),
        "lens-detect": lambda ck: LensDetect(threshold, top_fraction=top_fraction,
                                             checkpoint=ck, **common),
        "substructure": lambda ck: Substructure(ck, **common),
    }
    return [make[name](checkpoints.get(name)) for name in stages]


def run_cascade(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    stages: Sequence[str] | Sequence[Any] = STAGE_NAMES,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    batch_size: int = 256,
    checkpoints: dict[str, str | os.PathLike | None] | None = None,
    strict: bool = False,
    gallery: int = 16,
    progress: bool = True,
    buffer_gib: float | None = None,
    fuse: bool | None = None,
    precision: str = "fp32",
) -> dict:
    """Run the cascade over ``inputs`` and write catalogue, errors, summary and gallery to ``out``.

    Args:
        inputs: FITS files, directories, globs or URIs (see :func:`pipeline.io.read_cutouts`),
            or a :class:`pipeline.io.tiles.TilePlan` (tiles + a source catalogue, from
            :func:`pipeline.io.plan_tiles`), whose units (tiles) are then the files.
        out: output directory (created; an existing one is resumed).
        bands, size: passed to ``read_cutouts`` (must match what the models expect); a plan's
            own bands and size replace them.
        stages: stage names in order (any of "denoise", "lens-detect", "substructure"), or
            ready Stage objects (your own included).
        threshold / top_fraction: the detector's candidate cut (see ``LensDetect``).
        batch_size: rows per model batch.
        checkpoints: stage name -> checkpoint directory; missing names use shipped weights.
        strict: stop at the first unreadable file instead of writing error rows.
        gallery: number of top candidates to draw in ``gallery.png`` (0: none).
        progress: show a progress bar.
        buffer_gib: object-store memory the streaming job may hold (blocks read ahead of the
            models, results waiting for the writer); default 0.125 GiB per cluster CPU, at
            least 0.25. Raise it for large multi-band cutouts (a block is one input file).
        fuse: run consecutive stages in one actor pool (None: when the cluster has no GPU;
            see ``pipeline.compose``).
        precision: "fp32" or "bf16" (autocast) for the model stages built here.

    Returns:
        The summary (also written to ``out/summary.json``).
    """
    from pipeline import __version__
    from pipeline.compose import Pipeline
    from pipeline.io.reader import expand_paths
    from pipeline.io.tiles import TilePlan
    from pipeline.stages import Stage

    t0 = time.perf_counter()
    if buffer_gib is not None and not buffer_gib > 0:
        raise ValueError(f"buffer_gib must be > 0, got {buffer_gib}")
    out = Path(out)
    if all(isinstance(s, Stage) for s in stages) and stages:
        stage_objs = list(stages)
    else:
        stage_objs = build_stages(stages, threshold=threshold, top_fraction=top_fraction,
                                  batch_size=batch_size, checkpoints=checkpoints,
                                  precision=precision)
    pipeline = Pipeline(stage_objs, fuse=fuse)
    plan = inputs if isinstance(inputs, TilePlan) else None
    files = plan.units if plan is not None else expand_paths(inputs)[0]
    if plan is not None:
        bands, size = list(plan.bands), plan.size
    if len(set(files)) != len(files):
        raise ValueError("the same input file is listed twice: " +
                         ", ".join(sorted({f for f in files if files.count(f) > 1})))
    keys = {f: shard_key(f) for f in files}
    for sub in (CATALOG, ERRORS, SHARDS):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _check_same_options(out, {**_options_spec(stage_objs, bands, size),
                              **(plan.spec if plan is not None else {})})
    pending = [f for f in files if not (out / SHARDS / f"{keys[f]}.json").is_file()]

    writer = _ShardWriter(out, {f: keys[f] for f in pending})
    t_cascade = time.perf_counter()
    if pending:
        _stream(pipeline, pending, writer, bands=bands, size=size, strict=strict,
                progress=progress, buffer_gib=buffer_gib, plan=plan)
    t_written = time.perf_counter()

    markers = [_read_marker(out, keys[f]) for f in files]
    total = {k: sum(m[k] for m in markers if m) for k in ("rows", "good", "errors", "candidates")}
    written = _parquet_rows(out, [keys[f] for f in files])
    summary = {
        "lensray_version": __version__,
        "inputs": {"files": len(files), "skipped_finished": len(files) - len(pending),
                   "processed": len(writer.done), "empty": sorted(writer.empty)},
        "this_run": writer.counts(),
        "total": {**total, "catalog_parquet_rows": written[CATALOG],
                  "errors_parquet_rows": written[ERRORS]},
        "adds_up": total["rows"] == total["good"] + total["errors"]
        == written[CATALOG] + written[ERRORS],
        "stages": [{"stage": type(s).__name__, "options": s.options, "batch_size": s.batch_size}
                   for s in stage_objs],
        "models": writer.models,
        "timings_s": {"setup": round(t_cascade - t0, 3), "cascade": round(t_written - t_cascade, 3)},
        "throughput_rows_per_s": round(writer.counts()["rows"] / max(t_written - t_cascade, 1e-9), 1),
    }
    if not summary["adds_up"]:
        raise RuntimeError(f"{out}: row counts do not add up: {summary['total']}")
    if gallery:
        from pipeline.gallery import top_candidates, write_gallery

        t_g = time.perf_counter()
        rows = top_candidates(out / CATALOG, gallery, keys=[keys[f] for f in files])
        images = plan.cutouts([r[schema.INDEX] for r in rows]) if plan is not None else None
        summary["gallery"] = str(write_gallery(rows, out / "gallery.png", bands=bands, size=size,
                                               images=images))
        summary["timings_s"]["gallery"] = round(time.perf_counter() - t_g, 3)
    summary["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    _write_json(out / "summary.json", summary)
    return summary


def _stream(pipeline, files, writer, *, bands, size, strict, progress, buffer_gib,
            plan=None) -> None:
    """Read ``files`` (or cut the tiles ``files`` of ``plan``), run the stages and hand every
    output block to ``writer``, in order."""
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
            ds = pipeline.run(plan.dataset(files, strict=strict), drop=[schema.IMAGE])
        else:
            ds = pipeline.run_files(files, bands=bands, size=size, strict=strict,
                                    drop=[schema.IMAGE])
        bar = tqdm(total=len(files), unit="file", disable=not progress, dynamic_ncols=True,
                   desc="cascade")
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            before = len(writer.done)
            writer.add(table)
            bar.update(len(writer.done) - before)
            bar.set_postfix(rows=writer.rows_seen, candidates=writer.candidates_seen)
        before = len(writer.done)
        writer.close()
        bar.update(len(writer.done) - before)
        bar.close()
    except CutoutReadError as exc:  # strict: the file and reason, not Ray's remote traceback
        raise exc.unwrapped() from None
    finally:
        options.preserve_order, options.resource_limits, ctx.enable_progress_bars = saved


class _ShardWriter:
    """Collects the ordered output blocks and writes each input file's rows when it is complete."""

    def __init__(self, out: Path, keys: dict[str, str]):
        self.out, self.keys = out, keys
        self.current: str | None = None
        self.parts: list = []
        self.done: dict[str, dict] = {}
        self.models: dict[str, str] = {}
        self.empty: list[str] = []
        self.rows_seen = self.candidates_seen = 0

    def add(self, table) -> None:
        sources = table.column(schema.SOURCE).to_pylist()
        start = 0
        for i in range(1, len(sources) + 1):
            if i == len(sources) or sources[i] != sources[start]:
                self._take(sources[start], table.slice(start, i - start))
                start = i

    def _take(self, source: str, part) -> None:
        if source != self.current:
            self._commit()
            if source in self.done:
                raise RuntimeError(f"{source}: rows arrived after the file was written (row order "
                                   "was not preserved); rerun with the same --out to repair")
            if source not in self.keys:
                raise RuntimeError(f"{source}: rows from a file that was not asked for")
            self.current = source
        self.parts.append(part)
        self.rows_seen += part.num_rows
        if "is_candidate" in part.column_names:
            self.candidates_seen += int(part.column("is_candidate").to_numpy(False).sum())

    def close(self) -> None:
        """After a complete run: commit the last file; files that gave no row at all are empty
        (Ray Data delivered every block), so they are finished too."""
        self._commit()
        for source in self.missing():
            marker = {"source": source, "rows": 0, "good": 0, "errors": 0, "candidates": 0}
            _write_json(self.out / SHARDS / f"{self.keys[source]}.json", marker)
            self.done[source] = marker
            self.empty.append(source)

    def _commit(self) -> None:
        """Write the current file's catalogue and error rows, then its marker (all atomic)."""
        if self.current is None:
            return
        import pyarrow as pa

        from pipeline.io import write_catalog

        table = _string_nulls(pa.concat_tables(self.parts, promote_options="permissive"))
        key = self.keys[self.current]
        tmp = self.out / SHARDS / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        counts = write_catalog(table, tmp)
        for sub in (CATALOG, ERRORS):
            written = list((tmp / sub).glob("*.parquet"))
            target = self.out / sub / f"{key}.parquet"
            if written:
                os.replace(written[0], target)
            else:
                target.unlink(missing_ok=True)  # a stale file from an interrupted run
        shutil.rmtree(tmp, ignore_errors=True)
        cands = table.column("is_candidate").to_numpy(False) if "is_candidate" in table.column_names else []
        marker = {"source": self.current, "rows": counts["rows"], "good": counts["good"],
                  "errors": counts["errors"], "candidates": int(sum(cands))}
        _write_json(self.out / SHARDS / f"{key}.json", marker)
        for name in table.column_names:
            if name.startswith("model_") and name not in self.models:
                tags = [t for t in table.column(name).to_pylist() if t]
                if tags:
                    self.models[name] = tags[0]
        self.done[self.current] = marker
        self.current, self.parts = None, []

    def missing(self) -> list[str]:
        """Requested files that have produced no row (yet)."""
        return [s for s in self.keys if s not in self.done]

    def counts(self) -> dict[str, int]:
        return {k: sum(m[k] for m in self.done.values())
                for k in ("rows", "good", "errors", "candidates")}


def _options_spec(stages, bands, size) -> dict:
    """What decides the catalogue's values, one key per setting ("LensDetect.threshold"): the
    stages in order with their options, bands and size (not the device; the batch size only
    where a per-batch top fraction makes it count)."""
    names = [type(s).__name__ for s in stages]
    spec = {"bands": list(bands) if bands is not None else None, "size": size,
            "stages": ",".join(names)}
    for i, (name, stage) in enumerate(zip(names, stages, strict=True)):
        label = name if names.count(name) == 1 else f"{name}#{i + 1}"  # chained denoisers
        opts = {k: v for k, v in stage.options.items() if k != "device"}
        if opts.get("top_fraction") is not None:
            opts["batch_size"] = stage.batch_size
        spec.update({f"{label}.{k}": v for k, v in opts.items()})
    return json.loads(json.dumps(spec, default=str))  # as it reads back from disk


def _check_same_options(out: Path, spec: dict) -> None:
    """A resumed run must compute what the finished shards were computed with: else one
    catalogue would mix thresholds, checkpoints or precisions without saying so."""
    path = out / SHARDS / "_options.json"
    if not path.is_file():
        _write_json(path, spec)
        return
    old = json.loads(path.read_text())
    changed = [f"{k}: {old.get(k)!r} then, {spec.get(k)!r} now"
               for k in sorted(set(old) | set(spec)) if old.get(k) != spec.get(k)]
    if changed:
        raise ValueError(f"{out} was written with other options ({'; '.join(changed)}); rerun "
                         "with the same options to resume it, or write to a new --out")


def _string_nulls(table):
    """All-null columns (e.g. ``model_substructure`` with no candidates in a file) as strings,
    so every shard's Parquet file has the same schema."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
    return table


def _read_marker(out: Path, key: str) -> dict | None:
    path = out / SHARDS / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _parquet_rows(out: Path, keys: Sequence[str]) -> dict[str, int]:
    """Rows actually on disk for these shards (an independent check of the counts)."""
    import pyarrow.parquet as pq

    rows = {}
    for sub in (CATALOG, ERRORS):
        files = [out / sub / f"{k}.parquet" for k in keys]
        rows[sub] = sum(pq.ParquetFile(f).metadata.num_rows for f in files if f.is_file())
    return rows


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- demo
DEMO_PRESET = "euclid-vis"


def run_demo(out: str | os.PathLike, *, n: int = 300, seed: int = 0, lens_fraction: float = 0.03,
             progress: bool = True, **cascade_kwargs) -> dict:
    """Simulate a small Euclid-VIS-like field (``n`` cutouts, a few percent lenses) under
    ``out/demo-field`` with the lenstronomy simulator, then run the cascade on it.

    The field is simulated once: a rerun reuses it (and the finished shards of the catalogue).
    """
    from pipeline.simulate import read_manifest, shard_paths, simulate

    out = Path(out)
    field = out / "demo-field"
    try:
        read_manifest(field)
    except (FileNotFoundError, OSError):
        simulate(DEMO_PRESET, "lens", n=n, seed=seed, out=field,
                 priors={"lens_fraction": lens_fraction}, split_fractions=(0.0, 0.0, 1.0),
                 shard_size=max(1, -(-n // 4)), overwrite=True, progress=progress)
    return run_cascade(shard_paths(field, "test"), out, progress=progress, **cascade_kwargs)
