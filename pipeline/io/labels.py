"""Truth for observed cutouts: which are lenses (``lensray evaluate --labels``, model cards).

Two forms, read by :func:`load_labels`:

- a **folder** with ``lens/`` and ``nonlens/`` (or ``non-lens/``) subfolders of FITS files:
  every cutout of a file under ``lens/`` is a lens; the files are then the inputs too;
- a **table** (CSV or Parquet) with a ``source`` column (a file name such as
  ``EUCLJ174517.55+655612.5.fits``, a path, a stem, or a row id such as
  ``AEGIS_F814w_images_01:1``) and a ``label`` column (1/0, true/false, lens/nonlens), and
  optionally ``group`` (e.g. the survey), over which metrics are also reported apart.

:meth:`Labels.of` finds each catalogue row's label: by its id first, then by its file (full
path, name, stem). Rows that none names are unlabelled, never guessed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io.files import file_stem, list_inputs

SOURCE, LABEL, GROUP = "source", "label", "group"  # the columns of a label table
LENS_DIRS = ("lens", "lenses")
NONLENS_DIRS = ("nonlens", "non-lens", "non_lens", "nonlenses")
_TRUE = {"1", "true", "yes", "lens"}
_FALSE = {"0", "false", "no", "nonlens", "non-lens", "non_lens", "non lens"}


@dataclass
class Labels:
    """Labels by source (id, path, file name or stem), with optional groups, and the input
    files a label folder lists (empty for a table)."""

    where: str  # the folder or table they came from (for messages)
    label: dict[str, int]
    group: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def of(self, ids: Sequence[str], sources: Sequence[str]) -> tuple[np.ndarray, list]:
        """(labels as float, NaN where unlabelled; groups, None where none) of catalogue rows."""
        labels = np.full(len(ids), np.nan)
        groups: list[str | None] = [None] * len(ids)
        for i, (rid, src) in enumerate(zip(ids, sources, strict=True)):
            name = str(src).rstrip("/").rsplit("/", 1)[-1]
            key = next((k for k in (rid, src, name, file_stem(str(src))) if k in self.label), None)
            if key is not None:
                labels[i] = self.label[key]
                groups[i] = self.group.get(key)
        return labels, groups


def parse_label(value, where: str) -> int:
    """1 for a lens, 0 for a non-lens, from 1/0, true/false, yes/no or lens/nonlens."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ValueError(f"{where}: label {value!r} is neither a lens (1, true, lens) nor a "
                     "non-lens (0, false, nonlens)")


def load_labels(path: str | os.PathLike) -> Labels:
    """Labels from a folder with ``lens/`` and ``nonlens/`` or a CSV/Parquet table (see the
    module docstring); a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label folder or table")
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={SOURCE: "string", GROUP: "string"}))
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
    else:
        raise ValueError(f"{path}: labels must be a folder (lens/, nonlens/), a .csv or a .parquet")
    missing = [c for c in (SOURCE, LABEL) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: label table lacks {missing} (has {table.column_names})")
    cols = table.to_pydict()
    labels, groups = {}, {}
    for k, (src, lab) in enumerate(zip(cols[SOURCE], cols[LABEL], strict=True)):
        where = f"{path} row {k + 1}"
        if not src:
            raise ValueError(f"{where}: empty source")
        value = parse_label(lab, where)
        if labels.setdefault(str(src), value) != value:
            raise ValueError(f"{where}: {src} is labelled both lens and non-lens")
        if cols.get(GROUP) and cols[GROUP][k] is not None:
            groups[str(src)] = str(cols[GROUP][k])
    return Labels(str(path), labels, groups)


def _from_folder(path: Path) -> Labels:
    dirs = {d.name.lower(): d for d in path.iterdir() if d.is_dir()}
    lens = [dirs[n] for n in LENS_DIRS if n in dirs]
    non = [dirs[n] for n in NONLENS_DIRS if n in dirs]
    if not lens and not non:
        raise ValueError(f"{path}: a label folder needs a lens/ and a nonlens/ subfolder "
                         f"(has {sorted(dirs) or 'none'})")
    labels: dict[str, int] = {}
    for value, folders in ((1, lens), (0, non)):
        for folder in folders:
            labels.update(dict.fromkeys(list_inputs(folder).files, value))
    files = sorted(labels)
    names: dict[str, set] = {}  # also by file name, where one label goes with it
    for f in files:
        names.setdefault(Path(f).name, set()).add(labels[f])
    labels.update({n: v.pop() for n, v in names.items() if len(v) == 1 and n not in labels})
    return Labels(str(path), labels, files=files)
