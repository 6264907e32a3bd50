"""Decode one FITS file's bytes into cutout rows: the pure core of :func:`read_cutouts`.

No Ray here: :func:`decode_fits` turns bytes into a column batch (dict of NumPy arrays) following
:mod:`pipeline.io.schema`; the Ray datasource calls it once per file, tests and the serial
benchmark call it directly. Files are parsed from memory (never memory-mapped), so no file handle
outlives the read however many files a job touches.

Layouts, detected per file (first rule that applies):

1. **lensray cube shard**: an extension named ``CUTOUTS`` (N x H x W or N x B x H x W). One row
   per slice; ids, ``ra``/``dec`` and label columns from the ``CATALOG`` table or, if absent, the
   sibling Parquet file ``<stem>.parquet``; band names from the PRIMARY ``BAND1..BANDn`` keywords.
   A 3-D array in PRIMARY is *not* a shard: without ``CUTOUTS`` it is one multi-band cutout.
2. **named extensions** (any image HDU with an ``EXTNAME``, e.g. Euclid Q1 ``VIS_FLUX``,
   ``VIS_PSF``, ``VIS_RMS``...): the planes of ONE cutout, one row per file. ``bands`` picks HDUs by
   ``EXTNAME == band`` or ``EXTNAME == band + "_FLUX"`` (case-insensitive); without ``bands``, all
   ``*_FLUX`` HDUs in file order, else the first image HDU with data.
3. **unnamed image HDUs**: each image HDU with data is one cutout (index = HDU number), 2-D is one
   band, 3-D is bands x H x W (e.g. HSC g,r,i,z,y in PRIMARY). ``bands`` selects planes by the
   header's ``BAND1..BANDn`` names, or takes all planes in file order when their number equals
   ``len(bands)`` (a single-band file read with ``bands=["VIS"]``).

Anything that goes wrong becomes a row with ``error = "<source>: <reason>"`` and ``kind``
transient or permanent (:mod:`pipeline.io.schema`), never an exception, unless ``strict=True``.
A file that fails whole gives one row per cutout it should hold when that number is known (a
cube shard whose CUTOUTS header or sibling catalogue was read), else one row with
``index = -1`` saying the number is unknown. Reading a file's bytes retries transient failures
(``ReadOptions.attempts``; :func:`pipeline.io.files.retrying`).
"""

from __future__ import annotations

import gzip
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.io import schema
from pipeline.io.coords import centre_radec, pixel_scale
from pipeline.io.files import ReadFailure, file_stem, locate, read_bytes, retrying, sibling_parquet
from pipeline.io.pixels import centre_crop_or_pad, fix_nonfinite
from pipeline.io.writers import CATALOG_EXT, CLEAN_EXT, CUTOUTS_EXT

_RESERVED = set(schema.BASE_COLUMNS) | {schema.CLEAN, schema.ERROR_KIND}
_CORRUPT_HINTS = ("truncated", "corrupt", "error validating header", "extra bytes")
# ... except the one astropy gives for bytes after the last HDU, whose HDUs it reads: accepted.
_TRAILING_BYTES = "there may be extra bytes after the last hdu"


class CutoutReadError(ValueError):
    """A file or cutout could not be read (raised only with ``strict=True``)."""

    def unwrapped(self) -> CutoutReadError:
        """This error with only our message: raised in a Ray task, it arrives as a
        ``RayTaskError(CutoutReadError)`` whose message is the whole remote traceback."""
        lines = [x for x in str(self).splitlines() if "CutoutReadError: " in x]
        return CutoutReadError(lines[-1].split("CutoutReadError: ", 1)[1]) if lines else self


class _Reason(Exception):
    """Why a file or cutout is unreadable (becomes the text after '<source>: '), and whether
    another try may succeed (``kind``)."""

    def __init__(self, text: str, kind: str = schema.PERMANENT):
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class ReadOptions:
    """What to read from each file and how (validated before any file is touched)."""

    bands: tuple[str, ...] | None = None
    size: int | None = None
    clean: bool = False
    max_nonfinite: float = 0.1
    strict: bool = False
    geometry: bool = False  # also give each row its pixel scale and band names
    pixel_scale: float | None = None  # arcsec/px of every row, whatever the headers say
    band_names: tuple[str, ...] | None = None  # names of planes the file leaves unnamed
    attempts: int = 3  # tries of a read that fails transiently (network, timeout, permission)
    retry_wait: float = 0.5  # seconds before the second try, doubled before each next one

    def __post_init__(self):
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, (int, np.integer)) \
                or self.attempts < 1:
            raise ValueError(f"attempts must be a positive integer, got {self.attempts!r}")
        if not float(self.retry_wait) >= 0:
            raise ValueError(f"retry_wait must be >= 0 seconds, got {self.retry_wait!r}")
        if self.band_names is not None:
            names = (self.band_names,) if isinstance(self.band_names, str) else self.band_names
            names = tuple(str(b) for b in names)
            if not names or any(not b or "," in b for b in names):
                raise ValueError(f"band_names must be non-empty names without commas, got "
                                 f"{self.band_names!r}")
            object.__setattr__(self, "band_names", names)
        if self.pixel_scale is not None:
            scale = self.pixel_scale
            if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not (
                    math.isfinite(scale) and scale > 0):
                raise ValueError(f"pixel_scale must be a positive number of arcsec/px, got {scale!r}")
            object.__setattr__(self, "geometry", True)  # an override is a geometry column
        if self.bands is not None:
            if isinstance(self.bands, str):
                object.__setattr__(self, "bands", (self.bands,))
            bands = tuple(str(b) for b in self.bands)
            if not bands or any(not b for b in bands):
                raise ValueError(f"bands must be a non-empty list of names, got {self.bands!r}")
            if len({b.upper() for b in bands}) != len(bands):
                raise ValueError(f"bands contains duplicates: {list(bands)}")
            object.__setattr__(self, "bands", bands)
        if self.size is not None and (
            isinstance(self.size, bool)
            or not isinstance(self.size, (int, np.integer))
            or self.size < 1
        ):
            raise ValueError(f"size must be a positive integer or None, got {self.size!r}")
        if not 0.0 <= float(self.max_nonfinite) <= 1.0:
            raise ValueError(
                f"max_nonfinite must be a fraction in [0, 1], got {self.max_nonfinite!r}"
            )

    def error_image(self, nbands: int | None = None) -> np.ndarray:
        """The placeholder image of an error row: zeros of the target shape (no pixels without size)."""
        b = len(self.bands) if self.bands else (nbands or 1)
        side = self.size or 0
        return np.zeros((b, side, side), dtype=np.float32)


# ----------------------------------------------------------------------------- public core
def decode_fits(
    data: bytes,
    source: str,
    options: ReadOptions | None = None,
    sidecar: Callable[[], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Decode one FITS file (its bytes) into a batch of cutout rows.

    Args:
        data: the file's bytes (gzip-compressed bytes are inflated here).
        source: the path/URI recorded in the ``source`` column and in error messages.
        options: bands, size, clean, max_nonfinite, strict (see :class:`ReadOptions`).
        sidecar: called (only for a cube shard without a CATALOG HDU) to get the sibling Parquet
            table as a ``pyarrow.Table``, or None when there is none.

    Returns:
        dict of equal-length NumPy arrays: the base columns of :mod:`pipeline.io.schema`, label
        columns for cube shards, and ``clean`` when ``options.clean``. ``image`` is a 4-D array when
        all rows share a shape, else an object array of (bands, H, W) arrays.

    Raises:
        CutoutReadError: only with ``options.strict``, for the first unreadable file or cutout.
    """
    options = options or ReadOptions()
    stem = file_stem(source)
    try:
        if data[:2] == b"\x1f\x8b":  # gzip bytes: inflated here, whatever the name
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise _Reason(f"truncated or corrupt gzip stream ({exc})") from exc
        batch = _decode(data, source, stem, options, sidecar)
    except Exception as exc:  # one bad file becomes error rows, never a failed job
        reason = str(exc) if isinstance(exc, _Reason) else f"{type(exc).__name__}: {exc}"
        kind = exc.kind if isinstance(exc, _Reason) else schema.PERMANENT
        known = _expected(data, sidecar if kind == schema.PERMANENT else None)  # no 2nd wait
        batch = _file_error_batch(source, stem, reason, options, kind, known)
    return _strict(batch, options)


def _strict(batch: dict[str, np.ndarray], options: ReadOptions) -> dict[str, np.ndarray]:
    """``batch``, or with ``options.strict`` the first error raised as CutoutReadError."""
    if options.strict:
        for err in batch[schema.ERROR]:
            if err is not None:
                raise CutoutReadError(err)
    return batch


def read_fits_file(
    path: str, options: ReadOptions | None = None, filesystem: Any = None
) -> dict[str, np.ndarray]:
    """Read one FITS file into a batch of rows (plain Python, no Ray): bytes in, handle closed.

    ``path`` is a local path or a URI (``s3://``, ``gs://``: opened through ``pyarrow.fs``);
    ``filesystem`` is a ``pyarrow.fs.FileSystem`` to open it with instead (e.g. the one
    :func:`pipeline.io.files.list_inputs` listed with). A cube shard's sibling Parquet catalogue
    is read from the same place. Transient failures (network, timeout, permission) are tried
    ``options.attempts`` times; a file that still cannot be read is error rows of that kind
    (or raises, if strict).
    """
    options = options or ReadOptions()
    source = str(path)
    fs, where = locate(source, filesystem)

    def sidecar():
        try:
            return retrying(lambda: read_sidecar(where, fs), options.attempts, options.retry_wait)
        except ReadFailure as exc:
            raise _Reason(f"cannot read the sibling catalogue ({exc.reason})", exc.kind) from exc

    try:
        data = read_bytes(source, fs, options.attempts, options.retry_wait)
    except ReadFailure as exc:
        # A sibling catalogue may say how many cutouts are lost (not worth a wait on a remote
        # store that just failed transiently).
        remote_down = fs is not None and exc.kind == schema.TRANSIENT
        expected = None if remote_down else _expected(b"", lambda: read_sidecar(where, fs))
        batch = _file_error_batch(source, file_stem(source), f"cannot open ({exc.reason})",
                                  options, exc.kind, expected)
        return _strict(batch, options)
    return decode_fits(data, source, options, sidecar)


def read_sidecar(path: str, filesystem: Any = None):
    """The Parquet catalogue next to cube shard ``path`` as a ``pyarrow.Table``, or None.

    ``path`` is as ``filesystem`` names it (no URI scheme); None: the local filesystem."""
    import pyarrow.parquet as pq
    from pyarrow.fs import FileType, LocalFileSystem

    parquet = sibling_parquet(path)
    fs = filesystem or LocalFileSystem()
    fs = fs.unwrap() if hasattr(fs, "unwrap") else fs  # Ray wraps fsspec filesystems
    if fs.get_file_info(parquet).type != FileType.File:
        return None
    return pq.read_table(parquet, filesystem=fs)


# ----------------------------------------------------------------------------- dispatch
def _decode(data, source, stem, options, sidecar) -> dict[str, np.ndarray]:
    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True)
        except OSError as exc:
            raise _Reason(f"not a readable FITS file ({exc})") from exc
        try:
            with hdul:
                hdus = list(hdul)  # parses every header now
                names = [h.name.upper() for h in hdus]
                if CUTOUTS_EXT in names:
                    parts = _shard(hdus, names, stem, options, sidecar)
                else:
                    parts = _images(hdus, stem, options)
        except Exception:
            _check_corruption(caught)  # report the cause (truncation), not its symptom
            raise
        _check_corruption(caught)
    return _assemble(parts, source, options)


def _check_corruption(caught) -> None:
    for w in caught:
        text = " ".join(str(w.message).split())
        lower = text.lower()
        if _TRAILING_BYTES in lower:
            continue  # bytes after the last HDU: astropy reads the HDUs, so do we
        if any(hint in lower for hint in _CORRUPT_HINTS):
            raise _Reason(f"truncated or corrupt FITS file ({text})")


@dataclass
class _Parts:
    """Decoded rows of one file before assembly (images as a stack or a list)."""

    ids: list[str]
    index: list[int]
    ra: list[float]
    dec: list[float]
    images: list[np.ndarray] | np.ndarray
    errors: list[str | None]
    clean: list[np.ndarray] | np.ndarray | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    scales: list[float] | np.ndarray | None = None  # arcsec/px (options.geometry)
    band_names: list[str | None] | None = None  # "VIS" or "g,r,i" (options.geometry)


def _assemble(parts: _Parts, source: str, options: ReadOptions,
              kind: str = schema.PERMANENT) -> dict[str, np.ndarray]:
    n = len(parts.ids)
    errors = np.array([None if e is None else f"{source}: {e}" for e in parts.errors], dtype=object)
    batch = {
        schema.ID: np.array(parts.ids, dtype=object),
        schema.RA: np.asarray(parts.ra, dtype=np.float64),
        schema.DEC: np.asarray(parts.dec, dtype=np.float64),
        schema.IMAGE: _stack(parts.images),
        schema.SOURCE: np.full(n, source, dtype=object),
        schema.INDEX: np.asarray(parts.index, dtype=np.int64),
        schema.ERROR: errors,
        schema.ERROR_KIND: np.array([None if e is None else kind for e in parts.errors], dtype=object),
    }
    if options.clean:
        batch[schema.CLEAN] = _stack(parts.clean)
    if options.geometry:
        scales = options.pixel_scale if options.pixel_scale is not None else parts.scales
        batch[schema.PIXEL_SCALE] = (np.full(n, np.nan) if scales is None
                                     else np.broadcast_to(np.asarray(scales, np.float64), n).copy())
        batch[schema.BAND_NAMES] = np.array(parts.band_names or [None] * n, dtype=object)
    batch.update(parts.labels)
    return batch


def _stack(images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        return images
    if len({im.shape for im in images}) == 1:
        return np.stack(images)
    out = np.empty(len(images), dtype=object)
    out[:] = list(images)
    return out


def _file_error_batch(source, stem, reason, options, kind=schema.PERMANENT,
                      expected: dict | None = None) -> dict[str, np.ndarray]:
    """The rows of a file that failed whole: one per cutout it should hold when ``expected``
    (:func:`_expected`) knows them, else one (``index`` -1) saying their number is unknown."""
    img = options.error_image()
    if expected is None:
        reason = f"{reason} [whole file, number of cutouts unknown]"
        parts = _Parts([f"{stem}:-1"], [-1], [math.nan], [math.nan], [img], [reason], [img])
        return _assemble(parts, source, options, kind)
    n = len(expected["ra"])
    ids = expected["ids"] or [f"{stem}:{i}" for i in range(n)]
    reason = f"{reason} [whole file: all {n} cutouts]"
    parts = _Parts(list(ids), list(range(n)), expected["ra"], expected["dec"],
                   [img] * n, [reason] * n, [img] * n)
    return _assemble(parts, source, options, kind)


def _expected(data: bytes, sidecar: Callable[[], Any] | None) -> dict | None:
    """The cutouts a failed file should hold, as far as can be known: ids and positions from
    the sibling catalogue, else their number from a cube shard's headers (ids then None);
    None when unknown. Never raises: the file has failed already."""
    try:
        table = sidecar() if sidecar is not None else None
    except Exception:  # noqa: BLE001 - a best effort
        table = None
    if table is not None and schema.ID in table.column_names:
        n = table.num_rows
        col = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        return {"ids": [str(x) for x in col[schema.ID]],
                "ra": np.asarray(col.get(schema.RA, np.full(n, np.nan)), np.float64),
                "dec": np.asarray(col.get(schema.DEC, np.full(n, np.nan)), np.float64)}
    n = _header_count(data)
    return None if n is None else {"ids": None, "ra": np.full(n, np.nan), "dec": np.full(n, np.nan)}


def _header_count(data: bytes) -> int | None:
    """The number of cutouts a cube shard's headers announce (CUTOUTS' outermost axis, else
    PRIMARY's NCUTOUT), read from what of ``data`` parses; None if it says none."""
    import zlib

    from astropy.io import fits

    if data[:2] == b"\x1f\x8b":  # what inflates before the damage
        data = zlib.decompressobj(wbits=31).decompress(data)
    count = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    header = hdu.header
                    count = count if count is not None else header.get("NCUTOUT")
                    if hdu.name.upper() == CUTOUTS_EXT and header.get("NAXIS", 0) >= 3:
                        return int(header[f"NAXIS{header['NAXIS']}"])
    except Exception:  # noqa: BLE001 - a damaged file: what parsed so far
        pass
    return int(count) if isinstance(count, (int, np.integer)) and count > 0 else None


# ----------------------------------------------------------------------------- pixel finishing
def _finish(stack: np.ndarray, errors: list, options: ReadOptions) -> np.ndarray:
    """Non-finite policy then size policy on (N, B, H, W); fills ``errors`` in place."""
    stack, reasons = fix_nonfinite(stack, options.max_nonfinite)
    for i, r in enumerate(reasons):
        if r is not None and errors[i] is None:
            errors[i] = r
    if options.size is not None:
        from pipeline.io.pixels import band_median

        stack = centre_crop_or_pad(stack, options.size, band_median(stack))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        stack[bad] = 0.0
    return np.ascontiguousarray(stack, dtype=np.float32)


# ----------------------------------------------------------------------------- plane selection
def _select_planes(names: Sequence[str] | None, nplanes: int, bands, where: str) -> list[int]:
    """Indices of the requested bands among ``nplanes`` planes with optional ``names``."""
    if bands is None:
        return list(range(nplanes))
    if names:
        upper = [n.upper() for n in names]
        missing = [b for b in bands if b.upper() not in upper]
        if missing:
            raise _Reason(
                f"band {missing[0]!r} not found in {where} (available: {', '.join(names)})"
            )
        return [upper.index(b.upper()) for b in bands]
    if nplanes == len(bands):
        return list(range(nplanes))
    raise _Reason(
        f"{where} has {nplanes} planes without band names; cannot select bands {list(bands)}"
    )


def _band_keywords(header, nplanes: int, options: ReadOptions, where: str) -> list[str] | None:
    """The planes' names: BAND1..BANDn keywords, else ``options.band_names`` (the user's)."""
    names = [header.get(f"BAND{k}") for k in range(1, nplanes + 1)]
    if all(n is not None for n in names):
        return [str(n) for n in names]
    given = options.band_names
    if given is not None and len(given) != nplanes:
        raise _Reason(f"{where} has {nplanes} unnamed planes, but band_names names "
                      f"{len(given)} ({','.join(given)})")
    return list(given) if given is not None else None


def _planes(data, where: str) -> np.ndarray:
    """An HDU's data as float32 (B, H, W)."""
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise _Reason(
        f"{where} has {arr.ndim} dimensions {arr.shape} (expected H x W or bands x H x W)"
    )


# ----------------------------------------------------------------------------- image layouts
_IMAGE_TYPES: tuple = ()


def _is_image(hdu) -> bool:
    global _IMAGE_TYPES
    if not _IMAGE_TYPES:
        from astropy.io import fits

        _IMAGE_TYPES = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    return isinstance(hdu, _IMAGE_TYPES)


def _shape(hdu) -> tuple[int, ...]:
    """Array shape (NumPy order) from the header, without loading the data."""
    return tuple(hdu.shape)


def _describe(hdus) -> str:
    return ", ".join(
        f"{i}:{h.name or '(unnamed)'}{list(_shape(h)) if _is_image(h) else ''}"
        for i, h in enumerate(hdus)
    )


def _images(hdus, stem: str, options: ReadOptions) -> _Parts:
    images = [(i, h) for i, h in enumerate(hdus) if _is_image(h) and _shape(h)]
    if not images:
        raise _Reason(f"no image HDU with data (HDUs: {_describe(hdus)})")
    empty = [(i, h) for i, h in images if 0 in _shape(h)]
    if len(empty) == len(images):
        raise _Reason(f"empty image HDU(s) (HDUs: {_describe(hdus)})")
    with_data = [(i, h) for i, h in images if 0 not in _shape(h)]
    if options.clean:
        raise _Reason(f"clean=True needs a lensray cube shard with a {CLEAN_EXT} extension")
    primary = hdus[0].header
    if any(h.header.get("EXTNAME") for _, h in with_data):
        cutouts = [_named_cutout(with_data, primary, options)]
    else:
        cutouts = [_unnamed_cutout(i, h, primary, options) for i, h in with_data]
    parts = _Parts([], [], [], [], [], [], [], scales=[], band_names=[])
    for index, image, (ra, dec), err, (header, names) in cutouts:
        known = options.geometry and options.pixel_scale is None and header is not None
        parts.scales.append(pixel_scale(header, primary) if known else math.nan)
        parts.band_names.append(",".join(names) if names else None)
        errs = [err]
        if image is not None:
            image = _finish(image[None], errs, options)[0]
        if errs[0] is not None:
            image = options.error_image(None if image is None else image.shape[0])
        parts.ids.append(f"{stem}:{index}")
        parts.index.append(index)
        parts.ra.append(ra)
        parts.dec.append(dec)
        parts.images.append(image)
        parts.errors.append(errs[0])
    parts.clean = list(parts.images)
    return parts


def _named_cutout(with_data, primary, options):
    by_name = {h.name.upper(): (i, h) for i, h in with_data}
    index = with_data[0][0]
    try:
        if options.bands:
            chosen = []
            for band in options.bands:
                hit = by_name.get(band.upper()) or by_name.get(band.upper() + "_FLUX")
                if hit is None:
                    names = ", ".join(h.name for _, h in with_data)
                    raise _Reason(
                        f"band {band!r} not found: no HDU named {band.upper()!r} or "
                        f"{band.upper() + '_FLUX'!r} (available: {names})"
                    )
                chosen.append(hit)
        else:
            chosen = [(i, h) for i, h in with_data if h.name.upper().endswith("_FLUX")] or [
                with_data[0]
            ]
        index = chosen[0][0]
        planes = [_planes(h.data, f"HDU {i} ({h.name})") for i, h in chosen]
        if len(planes) > 1 and any(p.shape[0] != 1 for p in planes):
            raise _Reason(
                "a multi-band selection needs 2-D HDUs, got "
                + ", ".join(f"{h.name} {list(_shape(h))}" for _, h in chosen)
            )
        if len({p.shape[1:] for p in planes}) > 1:
            raise _Reason(
                "bands have different shapes: "
                + ", ".join(
                    f"{h.name} {p.shape[1]}x{p.shape[2]}"
                    for (_, h), p in zip(chosen, planes, strict=True)
                )
            )
        image = np.concatenate(planes) if len(planes) > 1 else planes[0]
        pos = centre_radec(chosen[0][1].header, *image.shape[1:], fallback=primary)
        names = [_band_of(h.name) for _, h in chosen]
        return index, image, pos, None, (chosen[0][1].header, names)
    except _Reason as exc:
        return index, None, (math.nan, math.nan), str(exc), (None, None)


def _band_of(extname: str) -> str:
    """The band an extension holds: 'VIS_FLUX' -> 'VIS'."""
    return extname[: -len("_FLUX")] if extname.upper().endswith("_FLUX") else extname


def _unnamed_cutout(i, hdu, primary, options):
    try:
        image = _planes(hdu.data, f"HDU {i}")
        names = _band_keywords(hdu.header, image.shape[0], options, f"HDU {i}")
        if names is None and image.shape[0] == 1 and options.bands:
            _check_filter(hdu.header, options.bands[0], f"HDU {i}")
        picked = _select_planes(names, image.shape[0], options.bands, f"HDU {i}")
        image = image[picked]
        pos = centre_radec(hdu.header, *image.shape[1:], fallback=primary if i else None)
        return i, image, pos, None, (hdu.header, names and [names[k] for k in picked])
    except _Reason as exc:
        return i, None, (math.nan, math.nan), str(exc), (None, None)


def _check_filter(header, band: str, where: str) -> None:
    """An unnamed single plane is accepted for one requested band unless FILTER contradicts it."""
    filt = str(header.get("FILTER", "")).strip().upper()
    if filt and band.upper() not in filt and filt not in band.upper():
        raise _Reason(f"{where} has FILTER={filt!r}, not band {band!r}")


# ----------------------------------------------------------------------------- cube shards
def _shard(hdus, names, stem, options, sidecar) -> _Parts:
    primary = hdus[0].header
    cut = hdus[names.index(CUTOUTS_EXT)]
    if cut.data is None:
        raise _Reason(f"{CUTOUTS_EXT} extension is empty")
    stack = np.asarray(cut.data, dtype=np.float32)
    if stack.ndim == 3:
        stack = stack[:, None]
    if stack.ndim != 4 or 0 in stack.shape:
        raise _Reason(
            f"{CUTOUTS_EXT} has shape {stack.shape} (expected N x H x W or N x bands x H x W)"
        )
    n, nb = stack.shape[:2]
    band_names = _band_keywords(primary, nb, options, CUTOUTS_EXT)
    sel = _select_planes(band_names, nb, options.bands, CUTOUTS_EXT)
    stack = stack[:, sel]
    clean = None
    if options.clean:
        if CLEAN_EXT not in names or hdus[names.index(CLEAN_EXT)].data is None:
            raise _Reason(f"clean=True but the shard has no {CLEAN_EXT} extension")
        clean = np.asarray(hdus[names.index(CLEAN_EXT)].data, dtype=np.float32)
        clean = clean.reshape(n, nb, *stack.shape[2:])[:, sel]

    table = _shard_table(hdus, names, sidecar)
    if table is not None:
        bad = {k: len(v) for k, v in table.items() if len(v) != n}
        if bad:
            raise _Reason(f"catalogue has {next(iter(bad.values()))} rows for {n} cutouts")
        reserved = _RESERVED | ({schema.PIXEL_SCALE, schema.BAND_NAMES} if options.geometry else set())
        clash = sorted(set(table) & (reserved - {schema.ID, schema.RA, schema.DEC}))
        if clash:
            raise _Reason(f"catalogue columns {clash} clash with reserved row columns")
    table = table or {}
    ids = table.pop(schema.ID, None)
    ids = [str(x) for x in ids] if ids is not None else [f"{stem}:{i}" for i in range(n)]
    nan = np.full(n, np.nan)
    ra = np.asarray(table.pop(schema.RA, nan), dtype=np.float64)
    dec = np.asarray(table.pop(schema.DEC, nan), dtype=np.float64)

    errors: list[str | None] = [None] * n
    stack = _finish(stack, errors, options)
    if clean is not None:
        clean_errors: list[str | None] = [None] * n
        clean = _finish(clean, clean_errors, options)
        for i, e in enumerate(clean_errors):
            if e is not None and errors[i] is None:
                errors[i] = f"{CLEAN_EXT}: {e}"
        bad = [i for i, e in enumerate(errors) if e is not None]
        stack[bad] = 0.0
        clean[bad] = 0.0
    parts = _Parts(ids, list(range(n)), ra, dec, stack, errors, clean, table)
    if options.geometry:  # one pixel grid and one band list for the whole shard
        parts.scales = np.full(n, pixel_scale(primary) if options.pixel_scale is None else np.nan)
        parts.band_names = [",".join(band_names[k] for k in sel) if band_names else None] * n
    return parts


def _shard_table(hdus, names, sidecar) -> dict[str, np.ndarray] | None:
    if CATALOG_EXT in names:
        rec = hdus[names.index(CATALOG_EXT)].data  # FITS_rec: big-endian columns, bytes strings
        cols = {name: np.asarray(rec[name]) for name in rec.names} if rec is not None else {}
    else:
        pa_table = sidecar() if sidecar is not None else None
        if pa_table is None:
            return None
        cols = {
            name: np.asarray(pa_table.column(name).to_numpy(zero_copy_only=False))
            for name in pa_table.column_names
        }
    return {name: _native(col) for name, col in cols.items()}


def _native(col: np.ndarray) -> np.ndarray:
    """A table column as native-endian numbers or an object array of str."""
    if col.dtype.kind == "S":
        return np.char.decode(col, "utf-8").astype(object)
    if col.dtype.kind == "U":
        return col.astype(object)
    if col.dtype.byteorder not in ("=", "|"):
        return col.astype(col.dtype.newbyteorder("="))
    return col
