"""``lensray evaluate --labels``: the cascade on labelled cutouts, scored as a survey would be.

    evaluate_cutouts([], "labels/", "eval/")   # = lensray evaluate --labels labels/ --out eval/

Runs the same cascade as ``lensray run`` (:func:`pipeline.run.run_cascade`, into ``out``:
catalogue, errors, summary), joins its ``p_lens`` with the truth (``pipeline.io.labels``: a
``lens/`` + ``nonlens/`` folder or a CSV/Parquet table; simulated cube shards carry their own
``is_lens``), then writes

    OUT/metrics.json   lens-finding metrics (``pipeline.metrics.lens_metrics``: AUC, TPR0, TPR10,
                       purity and FPR at 50%/90% completeness for ``lens_rate``) over all scored
                       rows and per ``group``, with the counts of rows scored, unlabelled and
                       labelled but not scored (error rows, with their reasons)
    OUT/roc.png        the ROC curves (all rows and each group)
    OUT/mistakes.png   the highest-scored non-lenses and lowest-scored lenses, with scores
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.io import schema
from pipeline.models.tasks import P_LENS

LENS_RATE = 1e-3  # lenses per cutout in a survey (~1 in 1,000 galaxies): purity is quoted at it


def evaluate_cutouts(
    inputs: Sequence[str | os.PathLike] | None,
    labels: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    lens_rate: float = LENS_RATE,
    mistakes: int = 8,
    progress: bool = True,
    **cascade,
) -> dict:
    """Run the cascade over ``inputs`` (None or empty: the files of a label folder) into
    ``out`` and score its ``p_lens`` against ``labels`` (None: the rows' own ``is_lens``, as
    simulated shards carry it); ``cascade``: :func:`pipeline.run.run_cascade` keywords
    (``survey``, ``pixel_scale``, ``checkpoints``...). Returns the metrics (also in
    ``out/metrics.json``)."""
    from pipeline.io.labels import load_labels
    from pipeline.io.writers import write_json
    from pipeline.run import run_cascade

    if not 0 < lens_rate < 1:
        raise ValueError(f"lens_rate must be in (0, 1), got {lens_rate}")
    truth = load_labels(labels) if labels is not None else None
    inputs = list(inputs or ()) or (truth.files if truth is not None else [])
    if not inputs:
        raise ValueError("nothing to evaluate: give INPUT files, or --labels with lens/ and "
                         "nonlens/ folders")
    out = Path(out)
    summary = run_cascade(inputs, out, gallery=0, progress=progress, **cascade)
    cat, err = (_table(out / d) for d in ("catalog", "errors"))
    if P_LENS not in cat:
        raise ValueError(f"{out}: no {P_LENS} column: evaluate needs the lens-detect stage")
    y, groups = _labels(cat, truth)
    y_err, _ = _labels(err, truth)
    p = np.asarray(cat[P_LENS], dtype=float)
    scored = np.isfinite(y) & np.isfinite(p)
    y_s, p_s = y[scored].astype(bool), p[scored]
    g_s = [g for g, k in zip(groups, scored, strict=True) if k]
    result = {
        "labels": truth.where if truth is not None else f"{schema.IS_LENS} column of the inputs",
        "lens_rate": lens_rate,
        "counts": {
            "rows": summary["total"]["rows"], "scored": int(scored.sum()),
            "lens": int(y_s.sum()), "nonlens": int((~y_s).sum()),
            "unlabelled": int((~np.isfinite(y)).sum() + (~np.isfinite(y_err)).sum()),
            "labelled_not_scored": int(np.isfinite(y_err).sum()
                                       + (np.isfinite(y) & ~np.isfinite(p)).sum()),
        },
        "all": _metrics(y_s, p_s, lens_rate),
        "groups": {g: _metrics(y_s[[h == g for h in g_s]], p_s[[h == g for h in g_s]], lens_rate)
                   for g in sorted({h for h in g_s if h is not None})},
        "not_scored": [{"id": i, "error": e} for i, e, lab in
                       zip(err.get(schema.ID, []), err.get(schema.ERROR, []), y_err, strict=True)
                       if np.isfinite(lab)],
        "survey": summary["survey"], "models": summary["models"],
    }
    curves = {"all": (y_s, p_s)} | {g: (y_s[[h == g for h in g_s]], p_s[[h == g for h in g_s]])
                                    for g in result["groups"]}
    from pipeline.gallery import write_gallery
    from pipeline.plots import write_roc

    result["roc"] = str(write_roc(curves, out / "roc.png", f"lens-detect on {len(p_s)} "
                                  "labelled cutouts"))
    rows = _mistakes(cat, y, p, mistakes)
    result["mistakes"] = str(write_gallery(
        rows, out / "mistakes.png", read=summary["read"], fit_to=summary["geometry"],
        title=f"highest-scored non-lenses and lowest-scored lenses ({len(rows)})"))
    write_json(out / "metrics.json", _finite(result))
    return result


def _table(directory: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    if not any(directory.glob("*.parquet")):
        return {}
    table = pq.read_table(directory)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _labels(rows: dict, truth) -> tuple[np.ndarray, list]:
    """(labels, NaN where none; groups) of catalogue ``rows``: from ``truth`` or, without it,
    the rows' own ``is_lens`` column."""
    ids = rows.get(schema.ID, np.array([], dtype=object))
    if truth is not None:
        return truth.of(list(ids), list(rows[schema.SOURCE]) if len(ids) else [])
    own = rows.get(schema.IS_LENS)
    y = np.full(len(ids), np.nan) if own is None else np.asarray(own, dtype=float)
    return y, [None] * len(ids)


def _metrics(y: np.ndarray, p: np.ndarray, lens_rate: float) -> dict:
    """``pipeline.metrics.lens_metrics`` when both classes are present, else the counts."""
    from pipeline.metrics import lens_metrics

    if y.all() or not y.any():
        return {"n_lens": int(y.sum()), "n_nonlens": int((~y).sum()), "lens_rate": lens_rate,
                "note": "one class only: no AUC, TPR or purity"}
    return lens_metrics(y, p, lens_rate)


def _mistakes(cat: dict, y: np.ndarray, p: np.ndarray, k: int) -> list[dict]:
    """Catalogue rows of the ``k`` highest-scored non-lenses, then the ``k`` lowest-scored
    lenses (with ``is_lens`` set, so their panels say the truth)."""
    rows = []
    for want, sign in ((0, -1), (1, 1)):
        idx = np.flatnonzero((y == want) & np.isfinite(p))
        for i in idx[np.argsort(sign * p[idx], kind="stable")[:k]]:
            rows.append({c: v[i] for c, v in cat.items()} | {schema.IS_LENS: want})
    return rows


def _finite(obj):
    """``obj`` with NaN and inf as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
