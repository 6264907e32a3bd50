"""The tile jobs: survey tiles + a source catalogue in, resumable per tile.

    run_tiles("tiles/*_{band}.fits", "sources.parquet", "out/", bands=["VIS"])  # lensray run --tiles
    cut_tiles("tiles/*_{band}.fits", "sources.parquet", "cubes/", bands=["VIS"])  # lensray cutout

Both plan on the driver once (:func:`pipeline.io.plan_tiles`: which tile cuts which source) and
then work unit by unit:

* ``run_tiles`` is :func:`pipeline.run.run_cascade` over the plan: a unit is a reference tile
  (and the catalogue, for its rows no tile covers); the output catalogue keeps the input
  catalogue's ids (``id``), its row (``index``) and its chosen columns.
* ``cut_tiles`` writes cube shards for training or later runs, in the workers: a unit is a run of
  at most ``shard_size`` sources of one tile, always the same for the same plan, written as::

    OUT/shards/<tile key>-<k>.fits      cube shard (write_cube_shard) of the good cutouts; its
                                        table: id, ra, dec, tile, catalog_row + catalogue columns
    OUT/errors/<tile key>-<k>.parquet   the rows that could not be cut, with the reason
    OUT/_shards/<tile key>-<k>.json     written last: the unit is finished (row counts)
    OUT/_shards/_options.json           what the shards were cut with (a rerun must match)
    OUT/summary.json                    counts: catalogue rows = cutouts + errors

A rerun with the same ``OUT`` skips finished units, so a killed job loses at most the units in
flight; every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import schema

SHARDS_DIR, ERRORS_DIR, MARKERS_DIR = "shards", "errors", "_shards"


def _plan(tiles, catalog, *, bands, size, columns, id_column, ra_column, dec_column,
          max_nonfinite):
    from pipeline.io import plan_tiles

    return plan_tiles(tiles, catalog, size, bands, columns=columns, id_column=id_column,
                      ra_column=ra_column, dec_column=dec_column, max_nonfinite=max_nonfinite)


def run_tiles(
    tiles: str | os.PathLike | Sequence[str | os.PathLike],
    catalog: Any,
    out: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    max_nonfinite: float = 0.1,
    **cascade_kwargs,
) -> dict:
    """Run the cascade on the cutouts of every catalogue source (``lensray run --tiles``).

    ``tiles``, ``catalog``, ``bands``, ``columns``, ``*_column``, ``max_nonfinite``: as
    :func:`pipeline.io.read_tiles`; ``size`` defaults to 64; ``cascade_kwargs``: those of
    :func:`pipeline.run.run_cascade` (stages, threshold, checkpoints, ...).
    """
    from pipeline.run import run_cascade

    plan = _plan(tiles, catalog, bands=bands, size=size or 64, columns=columns,
                 id_column=id_column, ra_column=ra_column, dec_column=dec_column,
                 max_nonfinite=max_nonfinite)
    return run_cascade(plan, out, bands=plan.bands, size=plan.size, **cascade_kwargs)


def cut_tiles(
    tiles: str | os.PathLike | Sequence[str | os.PathLike],
    catalog: Any,
    out: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    max_nonfinite: float = 0.1,
    shard_size: int = 1000,
    progress: bool = True,
) -> dict:
    """Cut every catalogue source into cube shards under ``out`` (``lensray cutout``).

    Args: as :func:`run_tiles`, plus ``shard_size``: at most this many sources per unit (and
    shard). Returns the summary (also written to ``out/summary.json``).

    Raises:
        ValueError: bad options, a catalogue column a FITS table cannot hold, or an ``out``
            written with other options.
    """
    from tqdm import tqdm

    from pipeline._ray import ensure_ray
    from pipeline.io.writers import _fits_column
    from pipeline.run import _check_same_options, _write_json, shard_key

    t0 = time.perf_counter()
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    plan = _plan(tiles, catalog, bands=bands, size=size or 64, columns=columns,
                 id_column=id_column, ra_column=ra_column, dec_column=dec_column,
                 max_nonfinite=max_nonfinite)
    extra = plan.catalog.extra
    for name in extra.column_names:  # fail now, not in the workers
        if name in _SHARD_COLUMNS:
            raise ValueError(f"catalog column {name!r} clashes with the shard's own {name!r}")
        try:
            values = _fits_column(name, np.asarray(extra.column(name).to_numpy(False)))
            if values.dtype.kind == "U" and not all(v.isascii() for v in values):
                raise ValueError("non-ASCII text")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"catalog column {name!r} cannot go into a shard's FITS table "
                             f"({exc}); leave it out with columns=") from None
    out = Path(out)
    for sub in (SHARDS_DIR, ERRORS_DIR, MARKERS_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _check_same_options(out, {"bands": list(plan.bands), "size": plan.size,
                              "shard_size": shard_size, **plan.spec})
    units, counter = [], {}
    for piece in plan.pieces(max_rows=shard_size):  # the same units for the same plan
        k = counter[piece.source] = counter.get(piece.source, -1) + 1
        units.append((f"{shard_key(piece.source)}-{k:04d}", piece))
    pending = [(key, p) for key, p in units if not (out / MARKERS_DIR / f"{key}.json").is_file()]

    ray = ensure_ray()
    write = ray.remote(num_cpus=1)(_write_unit)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    bar = tqdm(total=len(pending), unit="shard", disable=not progress, desc="cutout")
    in_flight: list = []
    t_cut = time.perf_counter()
    for key, piece in pending:
        if len(in_flight) >= window:
            done, in_flight = ray.wait(in_flight, num_returns=1)
            ray.get(done)
            bar.update(len(done))
        in_flight.append(write.remote(piece, str(out), key, plan.bands))
    ray.get(in_flight)
    bar.update(len(in_flight))
    bar.close()
    t_done = time.perf_counter()

    markers = [json.loads((out / MARKERS_DIR / f"{key}.json").read_text()) for key, _ in units]
    total = {k: sum(m[k] for m in markers) for k in ("rows", "good", "errors")}
    summary = {
        "units": {"total": len(units), "skipped_finished": len(units) - len(pending),
                  "processed": len(pending)},
        "tiles": {"units": len(plan.units), "left_out": plan.skipped},
        "total": total,
        "adds_up": total["rows"] == len(plan.catalog) == total["good"] + total["errors"],
        "timings_s": {"plan": round(t_cut - t0, 3), "cut": round(t_done - t_cut, 3)},
        "throughput_rows_per_s": round(sum(len(p) for _, p in pending) / max(t_done - t_cut, 1e-9), 1),
    }
    if not summary["adds_up"]:
        raise RuntimeError(f"{out}: row counts do not add up: {total} for {len(plan.catalog)} "
                           "catalogue rows")
    _write_json(out / "summary.json", summary)
    return summary


_SHARD_COLUMNS = ("tile", "catalog_row")


def _write_unit(piece, out: str, key: str, bands: Sequence[str]) -> dict:
    """Cut one unit and write its shard, its errors and then its marker (in a Ray worker)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io import write_cube_shard
    from pipeline.io.tiles import cut_piece
    from pipeline.io.writers import _atomic_write
    from pipeline.run import _write_json

    out = Path(out)
    batch, extra = cut_piece(piece)
    good = np.array([e is None for e in batch[schema.ERROR]], dtype=bool)
    shard = out / SHARDS_DIR / f"{key}.fits"
    if good.any():
        table = {schema.ID: batch[schema.ID][good], schema.RA: batch[schema.RA][good],
                 schema.DEC: batch[schema.DEC][good], "tile": batch[schema.SOURCE][good],
                 "catalog_row": batch[schema.INDEX][good]}
        table.update({name: np.asarray(extra.column(name).to_numpy(zero_copy_only=False))[good]
                      for name in extra.column_names})
        write_cube_shard(shard, batch[schema.IMAGE][good], table, [b or "image" for b in bands],
                         header={"TILE": piece.source}, overwrite=True)
    else:
        shard.unlink(missing_ok=True)  # from an interrupted run with other results
    errors = out / ERRORS_DIR / f"{key}.parquet"
    if (~good).any():
        cols = {k: batch[k][~good].tolist() for k in (schema.ID, schema.RA, schema.DEC,
                                                      schema.SOURCE, schema.INDEX, schema.ERROR)}
        table = pa.table(cols)
        for name in extra.column_names:
            table = table.append_column(name, extra.column(name).filter(pa.array(~good)))
        _atomic_write(errors, lambda f: pq.write_table(table, f))
    else:
        errors.unlink(missing_ok=True)
    marker = {"source": piece.source, "rows": len(piece), "good": int(good.sum()),
              "errors": int((~good).sum())}
    _write_json(out / MARKERS_DIR / f"{key}.json", marker)
    return marker
