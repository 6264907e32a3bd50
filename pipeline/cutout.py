"""``lensray cutout``: survey tiles + a source catalogue in, cube shards out, resumable.

    plan = plan_tiles("tiles/*_{band}.fits", load_catalog("sources.parquet"), 64, ["VIS"])
    cut_tiles(plan, "cubes/")

The plan (:func:`pipeline.io.plan_tiles`, on the driver) says which tile cuts which source; the
shards are then written by Ray tasks, one per *unit*: a run of at most ``shard_size`` sources of
one tile, always the same units for the same plan and ``shard_size`` (never the cluster)::

    OUT/shards/<tile key>-<k>.fits      cube shard (write_cube_shard) of the unit's good cutouts;
                                        its table: id, ra, dec, tile, catalog_row + catalogue columns
    OUT/errors/<tile key>-<k>.parquet   the unit's rows that could not be cut, with the reason
    OUT/_shards/<tile key>-<k>.json     written last: the unit is finished (row counts)
    OUT/_shards/_options.json           what the shards were cut with (a rerun must match)
    OUT/summary.json                    counts: catalogue rows = cutouts + errors

A rerun with the same ``OUT`` skips finished units, so a killed job loses at most the units in
flight; every file is written to a temporary name and renamed. (The cascade over tiles,
``lensray run --tiles``, is :func:`pipeline.run.run_cascade` over the same plan.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import schema
from pipeline.io.catalog import ERRORS_DIR
from pipeline.io.catalog import SHARDS_DIR as MARKERS_DIR  # the markers, as a catalogue's

SHARDS_DIR = "shards"  # the cube shards
_SHARD_COLUMNS = ("tile", "catalog_row")  # beside the catalogue's columns in a shard's table


def cut_tiles(plan: Any, out: str | Path, *, shard_size: int = 1000, progress: bool = True) -> dict:
    """Cut every source of ``plan`` (a :class:`pipeline.io.tiles.TilePlan`) into cube shards
    under ``out``, ``shard_size`` sources at most per unit and shard.

    Returns the summary (also written to ``out/summary.json``).

    Raises:
        ValueError: a catalogue column a shard's FITS table cannot hold, or an ``out`` written
            with other options (tiles, catalogue, columns, bands, size, shard size).
    """
    from tqdm import tqdm

    from pipeline._ray import ensure_ray
    from pipeline.io.catalog import check_options, shard_key
    from pipeline.io.writers import _fits_column, write_json

    t0 = time.perf_counter()
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
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
    check_options(out, {"bands": list(plan.bands), "size": plan.size,
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
        "timings_s": {"setup": round(t_cut - t0, 3), "cut": round(t_done - t_cut, 3)},
        "throughput_rows_per_s": round(sum(len(p) for _, p in pending) / max(t_done - t_cut, 1e-9), 1),
    }
    if not summary["adds_up"]:
        raise RuntimeError(f"{out}: row counts do not add up: {total} for {len(plan.catalog)} "
                           "catalogue rows")
    write_json(out / "summary.json", summary)
    return summary


def _write_unit(piece, out: str, key: str, bands: Sequence[str]) -> dict:
    """Cut one unit and write its shard, its errors and then its marker (in a Ray worker)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io import write_cube_shard
    from pipeline.io.tiles import cut_piece
    from pipeline.io.writers import atomic_write, write_json

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
        atomic_write(errors, lambda f: pq.write_table(table, f))
    else:
        errors.unlink(missing_ok=True)
    marker = {"source": piece.source, "rows": len(piece), "good": int(good.sum()),
              "errors": int((~good).sum())}
    write_json(out / MARKERS_DIR / f"{key}.json", marker)
    return marker
