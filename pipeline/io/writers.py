"""Writers: FITS cube shards (training data, simulator output) and the atomic file writes that
every writer of the package uses (``pipeline.io.catalog`` writes the Parquet catalogues).

A *cube shard* is one FITS file holding many cutouts of one shape::

    PRIMARY   no data; provenance: LENSRAY (version), NCUTOUT, NBANDS, BAND1..BANDn, + caller's keys
    CUTOUTS   ImageHDU, float32, N x B x H x W
    CATALOG   BinTableHDU, one row per cutout ("id" + optional "ra", "dec" + label columns)
    CLEAN     optional ImageHDU, float32, N x B x H x W noiseless images

``read_cutouts`` recognises a shard by its CUTOUTS extension; the catalogue may instead live in a
sibling Parquet file (``shard.parquet`` next to ``shard.fits``). Files are written to a temporary
name in the target directory and renamed into place (:func:`atomic_write`), so a killed writer
never leaves half a file.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.io import schema
from pipeline.io.files import sibling_parquet

CUTOUTS_EXT = "CUTOUTS"
CATALOG_EXT = "CATALOG"
CLEAN_EXT = "CLEAN"
SHARD_EXTS = (CUTOUTS_EXT, CATALOG_EXT, CLEAN_EXT)


def _version() -> str:
    from pipeline import __version__

    return __version__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- table helpers
def _table_columns(table: Any) -> dict[str, np.ndarray]:
    """A dict of 1-D NumPy columns from a dict of arrays or a pyarrow Table."""
    if hasattr(table, "column_names") and hasattr(table, "column"):  # pyarrow.Table
        return {
            name: np.asarray(table.column(name).to_numpy(zero_copy_only=False))
            for name in table.column_names
        }
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    raise TypeError(f"table must be a dict of 1-D arrays or a pyarrow.Table, got {type(table)!r}")


def _fits_column(name: str, values: np.ndarray) -> np.ndarray:
    """Coerce a column to a dtype FITS binary tables store (str, bool, int, float)."""
    if values.ndim != 1:
        raise ValueError(f"table column {name!r} must be 1-D, got shape {values.shape}")
    if values.dtype.kind in "biuf":
        return values
    if values.dtype.kind in "OUS":
        if values.dtype.kind == "O" and all(isinstance(v, (bool, np.bool_)) for v in values):
            return values.astype(bool)
        strings = [
            "" if v is None else (v.decode() if isinstance(v, bytes) else str(v)) for v in values
        ]
        return np.array(strings, dtype=str) if strings else np.array([], dtype="U1")
    raise TypeError(f"table column {name!r} has unsupported dtype {values.dtype}")


def _header_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value
    return json.dumps(value, default=str)


# ----------------------------------------------------------------------------- cube shards
def write_cube_shard(
    path: str | os.PathLike,
    images: np.ndarray,
    table: Mapping[str, Any] | Any,
    bands: Sequence[str],
    clean: np.ndarray | None = None,
    header: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    catalog: str = "hdu",
    quantum: float | None = None,
) -> pathlib.Path:
    """Write N cutouts and their label table to one FITS cube shard, atomically.

    Args:
        path: destination ``.fits`` file (its directory is created).
        images: float32 array (N, B, H, W) (an (N, H, W) array is accepted when B == 1).
        table: dict of 1-D arrays or a pyarrow.Table with N rows; must contain ``"id"``
            (unique strings); may contain ``"ra"``/``"dec"`` (float64 degrees) and any label
            columns (ints, floats, bools, strings).
        bands: the B band names, stored as BAND1..BANDn.
        clean: optional noiseless images, same shape as ``images``.
        header: extra provenance keywords for the PRIMARY header (preset, seed, versions ...);
            keys longer than 8 characters become HIERARCH cards, non-scalar values JSON strings.
        overwrite: replace an existing file instead of raising FileExistsError.
        catalog: "hdu" stores the table as the CATALOG extension; "parquet" writes it to the
            sibling ``<stem>.parquet`` instead (written first, so a shard never lacks its table).
        quantum: store CUTOUTS as int16 multiples of this step (FITS BSCALE; readers get float32
            back) instead of float32: noisy images compress ~4x better (gzip) when the step is
            well below their noise. Values must fit in +-32767 steps.

    Returns:
        The path written.
    """
    from astropy.io import fits
    from astropy.table import Table

    path = pathlib.Path(path)
    if catalog not in ("hdu", "parquet"):
        raise ValueError(f"catalog must be 'hdu' or 'parquet', got {catalog!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    bands = [str(b) for b in bands]
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3 and len(bands) == 1:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError(f"{path}: images must be (N, B, H, W), got shape {images.shape}")
    n, b = images.shape[:2]
    if len(bands) != b:
        raise ValueError(f"{path}: {len(bands)} band names {bands} for {b} bands in images")
    if clean is not None:
        clean = np.asarray(clean, dtype=np.float32).reshape(images.shape)

    cols = _table_columns(table)
    if schema.ID not in cols:
        raise ValueError(f"{path}: table has no {schema.ID!r} column (columns: {sorted(cols)})")
    for name, values in cols.items():
        if len(values) != n:
            raise ValueError(f"{path}: table column {name!r} has {len(values)} rows for {n} images")
    cols = {name: _fits_column(name, values) for name, values in cols.items()}
    for name, values in cols.items():
        if catalog == "hdu" and values.dtype.kind == "U" and not all(v.isascii() for v in values):
            raise ValueError(
                f"{path}: table column {name!r} has non-ASCII text, which FITS tables cannot "
                "store; pass catalog='parquet'"
            )
    ids = cols[schema.ID]
    if len(set(ids.tolist())) != n:
        raise ValueError(f"{path}: ids in the table are not unique")
    for coord in (schema.RA, schema.DEC):
        if coord in cols:
            cols[coord] = cols[coord].astype(np.float64)

    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["LENSRAY"] = (_version(), "lensray version that wrote this shard")
    hdr["NCUTOUT"] = (n, "number of cutouts")
    hdr["NBANDS"] = (b, "bands per cutout")
    for i, band in enumerate(bands, start=1):
        hdr[f"BAND{i}"] = band
    with warnings.catch_warnings():  # long keys become HIERARCH cards, which is what we want
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        for key, value in (header or {}).items():
            key = str(key).upper()
            hdr[key if len(key) <= 8 else f"HIERARCH {key}"] = _header_value(value)

    cutouts = fits.ImageHDU(images, name=CUTOUTS_EXT)
    if quantum is not None:
        q = np.round(images / quantum)
        if not np.all(np.abs(q) <= 32767):
            raise ValueError(f"{path}: images exceed +-32767 steps of quantum={quantum}")
        cutouts = fits.ImageHDU((q * quantum).astype(np.float32), name=CUTOUTS_EXT)
        cutouts.scale("int16", bscale=float(quantum), bzero=0)
    hdus = [primary, cutouts]
    if catalog == "hdu":
        table_hdu = fits.table_to_hdu(Table(cols))
        table_hdu.name = CATALOG_EXT
        hdus.append(table_hdu)
    if clean is not None:
        hdus.append(fits.ImageHDU(clean, name=CLEAN_EXT))

    path.parent.mkdir(parents=True, exist_ok=True)
    if catalog == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: v.tolist() if v.dtype.kind == "U" else v for k, v in cols.items()})
        atomic_write(sibling_parquet(str(path)), lambda f: pq.write_table(table, f))
    atomic_write(path, lambda f: fits.HDUList(hdus).writeto(f))
    return path


def atomic_write(path: str | os.PathLike, write, sync: bool = True) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place:
    readers see the old file or the new one, never a part. ``sync``: flush it to the disk
    first (a shard survives a power cut; small per-file records of a long run skip the cost)."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any, sync: bool = False) -> None:
    """``data`` as indented JSON at ``path``, atomically (see :func:`atomic_write`)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()), sync)
