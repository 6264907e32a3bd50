"""Candidate gallery: the top-scored cutouts of a catalogue, drawn with their scores.

The catalogue holds no pixels, so the few cutouts shown are read again from their source
files (``source`` + ``id``), with the same bands and size as the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.schema import ID
from pipeline.models.tasks import LENS_DETECT, P_LENS, SUBSTRUCTURE


def top_candidates(catalog_dir, k: int = 16,
                   keys: Sequence[str] | None = None) -> list[dict]:
    """The ``k`` rows with the highest ``p_lens`` (or the first ``k`` rows without a detector).

    ``catalog_dir``: a local directory or URI (:class:`pipeline.io.outdir.OutDir`); ``keys``
    limits the search to those shard files (``<key>.parquet``) of the catalogue.
    """
    import pyarrow as pa

    from pipeline.io.outdir import OutDir

    catalog = catalog_dir if isinstance(catalog_dir, OutDir) else OutDir(catalog_dir)
    names = catalog.list("")
    files = [n for n in names if n.endswith(".parquet")] if keys is None else [
        f"{key}.parquet" for key in keys if f"{key}.parquet" in names]
    if not files or k <= 0:
        return []
    table = pa.concat_tables([catalog.read_parquet(f) for f in files],
                             promote_options="permissive")
    if table.num_rows == 0:
        return []
    if P_LENS in table.column_names:
        p = np.nan_to_num(table.column(P_LENS).to_numpy(zero_copy_only=False).astype(float),
                          nan=-1.0)
        order = np.argsort(-p, kind="stable")[:k]
    else:
        order = np.arange(min(k, table.num_rows))
    return table.take(pa.array(order)).to_pylist()


def reread_cutouts(rows: list[dict], read: dict, fit_to: dict | None = None,
                   filesystem: Any = None) -> list[np.ndarray | None]:
    """The image of each row, read again from its source file with the ``read`` settings of
    its run (``ReadOptions`` keywords; None if it cannot be) and, with ``fit_to`` (a checkpoint
    config's bands, pixel_scale, size and task), fitted to it as the model saw it
    (``pipeline.models.fit_rows``). ``filesystem``: the one the run listed its inputs with
    (a ``source`` URI drops the query that named its endpoint)."""
    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.io.schema import IMAGE, SOURCE

    options = ReadOptions(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in read.items() if v is not None},
                          geometry=fit_to is not None)
    by_source: dict[str, dict] = {}
    images = []
    for row in rows:
        src = row.get(SOURCE)
        if src not in by_source:
            try:  # local paths and URIs alike, with a cube shard's sibling catalogue (its ids)
                batch = read_fits_file(src, options, filesystem)
                pictures = list(batch[IMAGE])
                if fit_to is not None:
                    from pipeline.models import fit_rows

                    fit = fit_rows(batch, fit_to)
                    pictures = [f if ok else p for f, ok, p in zip(fit.images, fit.ok, pictures,
                                                                   strict=True)]
                by_source[src] = dict(zip(batch[ID].tolist(), pictures, strict=True))
            except Exception:  # a gallery must not fail a finished run
                by_source[src] = {}
        images.append(by_source[src].get(row.get(ID)))
    return images


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An asinh-stretched greyscale (one band) or RGB (three or more: last = red) picture."""
    img = np.asarray(image, dtype=np.float64)
    sky = np.median(img, axis=(-2, -1), keepdims=True)
    noise = 1.4826 * np.median(np.abs(img - sky), axis=(-2, -1), keepdims=True) + 1e-12
    z = np.arcsinh((img - sky) / (3 * noise))
    lo, hi = np.percentile(z, [1, 99.7])
    z = np.clip((z - lo) / (hi - lo + 1e-12), 0, 1)
    if z.shape[0] >= 3:
        return np.moveaxis(z[[-1, len(z) // 2, 0]], 0, -1), None
    return z[0], "gray"


def _label(row: dict) -> tuple[str, str]:
    """(title: the id, caption: scores) for one panel."""
    rid = str(row.get(ID))
    lines = []
    if row.get(P_LENS) is not None:
        lines.append(f"{P_LENS} {row[P_LENS]:.3f}")
    classes = SUBSTRUCTURE.classes
    probs = {c: row.get(f"p_{c}") for c in classes}
    if all(v is not None and np.isfinite(v) for v in probs.values()):
        best = max(probs, key=probs.get)
        lines.append(f"{best} {probs[best]:.2f}")
        for name, k in SUBSTRUCTURE.targets.items():  # the parameter this class carries
            if classes[k] == best and row.get(name) is not None:
                lines.append(f"{name} {row[name]:.3g}±{row[f'{name}_sigma']:.2g}")
    truth = row.get(LENS_DETECT.class_column)
    if truth is not None:  # simulated data carry the truth
        lines.append("true lens" if truth else "true non-lens")
    return (rid if len(rid) <= 26 else "…" + rid[-25:]), "\n".join(lines)


def write_gallery(rows: list[dict], path: str | os.PathLike, *, read: dict | None = None,
                  fit_to: dict | None = None, columns: int = 4, title: str | None = None,
                  images: list | None = None, filesystem: Any = None) -> Path:
    """Draw ``rows`` (from :func:`top_candidates`) into a PNG grid at ``path`` (or a binary
    file object), re-read with
    the run's ``read`` settings (bands, size...) and fitted to ``fit_to`` (see
    :func:`reread_cutouts`, through ``filesystem``), or ``images``: the rows' cutouts when they
    cannot be read again from their source file (tiles); ``title`` above them (default: the top
    candidates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(rows))
    ncol = min(columns, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 3.0 * nrow), squeeze=False)
    images = (reread_cutouts(rows, read or {}, fit_to, filesystem) if images is None
              else images)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row, img in zip(axes.flat, rows, images, strict=False):
        if img is not None:
            pic, cmap = _display(img)
            ax.imshow(pic, cmap=cmap, origin="lower", interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "cutout\nunavailable", ha="center", va="center")
        head, caption = _label(row)
        ax.set_title(head, fontsize=7)
        ax.text(0.03, 0.03, caption, transform=ax.transAxes, fontsize=7, color="white",
                va="bottom", ha="left", bbox={"facecolor": "black", "alpha": 0.55, "pad": 2,
                                             "edgecolor": "none"})
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no candidates", ha="center", va="center")
    fig.suptitle(title or f"lensray: top {len(rows)} candidates by p_lens", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.0 * nrow)), h_pad=1.5)
    if hasattr(path, "write"):
        fig.savefig(path, dpi=110, format="png")
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
