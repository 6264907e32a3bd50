"""A human-readable summary of a cutout Dataset (what ``lensray read`` prints).

Images stay in the Ray workers: only id, ra, dec, shape, source, index, error and its kind come
back to the driver, so summarising a large read costs little driver memory.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from pipeline.io import schema

SHAPE = "shape"
_COLUMNS = (schema.ID, schema.RA, schema.DEC, SHAPE, schema.SOURCE, schema.ERROR)


def _summary_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = np.array(
        ["x".join(map(str, np.shape(im))) for im in batch[schema.IMAGE]], dtype=object
    )
    keep = (schema.ID, schema.RA, schema.DEC, schema.SOURCE, schema.INDEX, schema.ERROR,
            schema.ERROR_KIND)
    return {**{k: batch[k] for k in keep}, SHAPE: shapes}


def summarize(ds, progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """All rows of ``ds`` without images, sorted by (source, index), and their counts.

    Returns:
        ``(rows, {"rows": n, "good": n_good, "errors": n_errors, "transient": n,
        "permanent": n})`` (errors by kind).
    """
    from tqdm import tqdm

    small = ds.map_batches(_summary_batch, batch_format="numpy")
    rows = [
        row
        for row in tqdm(small.iter_rows(), desc="reading", unit=" cutouts", disable=not progress)
    ]
    rows.sort(key=lambda r: (r[schema.SOURCE], r[schema.INDEX]))
    kinds = [r[schema.ERROR_KIND] for r in rows if r[schema.ERROR]]
    return rows, {"rows": len(rows), "good": len(rows) - len(kinds), "errors": len(kinds),
                  **{k: kinds.count(k) for k in schema.ERROR_KINDS}}


def format_table(
    rows: list[dict[str, Any]], counts: dict[str, int], limit: int | None = None
) -> str:
    """A plain-text table of ``rows`` (at most ``limit``) followed by the counts line."""
    shown = rows if limit is None else rows[:limit]
    cells = [list(_COLUMNS)]
    for r in shown:
        cells.append(
            [
                str(r[schema.ID]),
                _deg(r[schema.RA]),
                _deg(r[schema.DEC]),
                str(r[SHAPE]),
                _short(r[schema.SOURCE]),
                _reason(r[schema.ERROR], r[schema.SOURCE]),
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in cells
    ]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows (raise --limit to see them)")
    by_kind = ", ".join(f"{k} {counts[k]}" for k in schema.ERROR_KINDS if counts.get(k))
    lines.append(f"rows={counts['rows']}  good={counts['good']}  errors={counts['errors']}"
                 + (f" ({by_kind})" if by_kind else ""))
    return "\n".join(line.rstrip() for line in lines)


def _deg(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.5f}"


def _short(source: str) -> str:
    if "://" in source:
        return source
    rel = os.path.relpath(source)
    return rel if not rel.startswith("..") else source


def _reason(error: str | None, source: str) -> str:
    """The error without the leading '<source>: ' (the source column already shows it)."""
    if not error:
        return ""
    prefix = f"{source}: "
    return error[len(prefix) :] if error.startswith(prefix) else error
