"""Source catalogues for :func:`pipeline.io.read_tiles`: an id, RA and Dec per source, plus columns
to carry through to the rows.

A catalogue is a Parquet file or directory, a CSV file, a FITS table (first table HDU), a local
path or a URI (``s3://``, ``gs://``, read through ``pyarrow.fs``), or already in memory: a
``ray.data.Dataset`` (collected to the driver), a ``pyarrow.Table``, a pandas DataFrame or a dict
of columns. It is loaded once, on the driver, which assigns every source to a tile.

Column names are configurable; by default the first of a few common names is taken,
case-insensitively (``ID_NAMES``, ``RA_NAMES``, ``DEC_NAMES``). RA/Dec are ICRS degrees.
Without an id column, ids are ``"<catalogue stem>:<row>"``, like ``read_cutouts``' ``"<file>:<index>"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.io import schema
from pipeline.io.decode import _native
from pipeline.io.files import FITS_SUFFIXES, file_stem, locate

ID_NAMES = ("id", "object_id", "objid", "objectid", "source_id", "sourceid")
RA_NAMES = ("ra", "right_ascension", "ra_deg", "raj2000", "alpha_j2000")
DEC_NAMES = ("dec", "declination", "dec_deg", "dej2000", "decj2000", "delta_j2000")
RESERVED = frozenset(schema.BASE_COLUMNS) | {schema.CLEAN}
_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")


@dataclass(frozen=True)
class SourceCatalog:
    """A loaded catalogue: ``name`` (the file, or ``"catalog"``), per-source ``ids`` (str),
    ``ra``/``dec`` (float64 degrees, NaN where the catalogue has none) and the ``extra`` columns
    to pass through (a ``pyarrow.Table`` with the same rows, in the same order)."""

    name: str
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    extra: Any

    def __len__(self) -> int:
        return len(self.ids)


def load_catalog(
    catalog: Any,
    *,
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> SourceCatalog:
    """Load ``catalog`` and pick its id, RA and Dec columns.

    Args:
        catalog: path/URI (Parquet file or directory, CSV, FITS table), ``ray.data.Dataset``,
            ``pyarrow.Table``, pandas DataFrame or dict of 1-D columns.
        id_column, ra_column, dec_column: column names (None: the first of ``ID_NAMES`` ...
            present, case-insensitively; no id column gives ``"<stem>:<row>"`` ids).
        columns: catalogue columns to carry into every row (None: all but the id/RA/Dec columns;
            naming one of those keeps it under its own name as well, e.g. an integer
            ``OBJECT_ID`` beside the string ``id``).

    Raises:
        FileNotFoundError: a catalogue file that does not exist.
        ValueError: missing or clashing columns, non-numeric RA/Dec, duplicate ids, no rows.
    """

    name = os.fspath(catalog) if isinstance(catalog, (str, os.PathLike)) else "catalog"
    table = _read(catalog, name)
    where = f"catalog {name}"
    if table.num_rows == 0:
        raise ValueError(f"{where}: no rows")
    names = table.column_names
    id_col = _pick(names, id_column, ID_NAMES, "id", where, required=False)
    ra_col = _pick(names, ra_column, RA_NAMES, "RA", where)
    dec_col = _pick(names, dec_column, DEC_NAMES, "Dec", where)
    used = {id_col, ra_col, dec_col}
    if columns is None:
        keep = [c for c in names if c not in used]
    else:
        keep = list(columns)
        missing = [c for c in keep if c not in names]
        if missing:
            raise ValueError(f"{where}: no column(s) {missing} (columns: {', '.join(names)})")
    # The catalogue's own id/ra/dec columns become the row columns of those names.
    keep = [c for c in keep if not (c in used and c in (schema.ID, schema.RA, schema.DEC))]
    clash = [c for c in keep if c in RESERVED]
    if clash:
        raise ValueError(f"{where}: column(s) {clash} clash with the row columns "
                         f"({', '.join(sorted(RESERVED))}); rename them or leave them out")
    n = table.num_rows
    if id_col is None:
        stem = file_stem(name)
        ids = np.array([f"{stem}:{i}" for i in range(n)], dtype=object)
    else:
        ids = np.array([None if v is None else str(v) for v in table.column(id_col).to_pylist()],
                       dtype=object)
        if any(v is None for v in ids):
            raise ValueError(f"{where}: id column {id_col!r} has nulls")
        if len(set(ids.tolist())) != n:
            dup = sorted({i for i, c in zip(*np.unique(ids.astype(str), return_counts=True),
                                            strict=True) if c > 1})
            raise ValueError(f"{where}: {len(dup)} ids in {id_col!r} are not unique "
                             f"(e.g. {', '.join(dup[:3])})")
    ra = _degrees(table, ra_col, where)
    dec = _degrees(table, dec_col, where)
    return SourceCatalog(name, ids, ra, dec, table.select(keep))


def _pick(names, given, defaults, label, where, required=True) -> str | None:
    if given is not None:
        if given not in names:
            raise ValueError(f"{where}: no {label} column {given!r} (columns: {', '.join(names)})")
        return given
    lower = {c.lower(): c for c in names}
    for cand in defaults:
        if cand in lower:
            return lower[cand]
    if required:
        raise ValueError(f"{where}: no {label} column (looked for {', '.join(defaults)}; "
                         f"columns: {', '.join(names)}); name it explicitly")
    return None


def _degrees(table, column: str, where: str) -> np.ndarray:
    import pyarrow as pa

    col = table.column(column)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise ValueError(f"{where}: column {column!r} is {col.type}, not degrees as numbers")
    return np.asarray(col.cast(pa.float64()).fill_null(np.nan).to_numpy(), dtype=np.float64)


def _read(catalog: Any, name: str):
    """The catalogue as a ``pyarrow.Table``."""
    import pyarrow as pa

    if isinstance(catalog, pa.Table):
        return catalog
    if hasattr(catalog, "to_arrow_refs"):  # ray.data.Dataset
        import ray

        tables = ray.get(catalog.to_arrow_refs())
        return pa.concat_tables(tables, promote_options="permissive")
    if hasattr(catalog, "to_dict") and hasattr(catalog, "columns"):  # pandas
        return pa.Table.from_pandas(catalog, preserve_index=False)
    if isinstance(catalog, dict):
        return pa.table({str(k): np.asarray(v) for k, v in catalog.items()})
    if not isinstance(catalog, (str, os.PathLike)):
        raise TypeError(f"catalog must be a path, a Ray Dataset or a table, got {type(catalog)!r}")
    fs, path = locate(name)
    if fs is None:
        from pyarrow.fs import LocalFileSystem

        fs, path = LocalFileSystem(), os.path.abspath(name)
    from pyarrow.fs import FileType

    info = fs.get_file_info(path)
    if info.type == FileType.NotFound:
        raise FileNotFoundError(f"catalog {name}: no such file or directory")
    lower = name.lower().rstrip("/")
    if info.type == FileType.Directory or lower.endswith((".parquet", ".pq", ".parq")):
        import pyarrow.dataset as pads

        return pads.dataset(path, filesystem=fs, format="parquet").to_table()
    if lower.endswith(_CSV_SUFFIXES):
        import pyarrow.csv as pacsv

        sep = "\t" if lower.endswith(".tsv") else ","
        with fs.open_input_stream(path, compression="detect") as f:
            return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(delimiter=sep))
    if lower.endswith(FITS_SUFFIXES):
        with fs.open_input_stream(path, compression="detect") as f:
            return _fits_table(f.read(), name)
    raise ValueError(f"catalog {name}: unknown format (Parquet, CSV or FITS table by suffix: "
                     f".parquet, {', '.join(_CSV_SUFFIXES)}, {', '.join(FITS_SUFFIXES)})")


def _fits_table(data: bytes, name: str):
    """The first table HDU of a FITS file as a ``pyarrow.Table`` (masked values as nulls)."""
    import io

    import pyarrow as pa
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(io.BytesIO(data), memmap=False) as hdul:
        hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
        if hdu is None:
            raise ValueError(f"catalog {name}: no table HDU")
        table = Table(hdu.data)
    cols = {}
    for col in table.itercols():
        values = _native(np.asarray(col))
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
        cols[col.name] = pa.array(list(values) if values.ndim > 1 else values,
                                  mask=mask if mask.ndim == 1 and mask.any() else None)
    return pa.table(cols)
