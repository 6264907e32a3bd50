"""``read_tiles``: survey tiles and a source catalogue in, one cutout row per source out.

Surveys publish large calibrated tiles with a WCS (one image per band) and source catalogues;
``read_tiles`` cuts the ``size`` x ``size`` cutout astropy's ``Cutout2D`` would cut around every
catalogue source and returns the rows of :func:`pipeline.io.read_cutouts` (schema:
:mod:`pipeline.io.schema`) plus the catalogue's own columns. Everything downstream (stages,
writers, the main job) is the same road.

On the driver (:func:`plan_tiles`):

1. **Tiles and bands** (:func:`find_tiles`): a ``{band}`` field in a path pattern names the band
   (``"tiles/*_{band}.fits"``); otherwise an image HDU names it by ``EXTNAME`` (``VIS`` or
   ``VIS_FLUX``, Euclid Q1 style) or by a ``FILTER``/``BAND`` keyword. Only headers are read.
2. **Assignment**: per band, every source goes to the image whose pixel footprint contains it,
   the one where it is farthest from the edge where images overlap (a KD-tree on the sky picks
   the candidates, the WCS decides). The first band is the reference: its image is the row's
   ``source`` and the unit of work. Other bands must be on the reference's pixel grid up to an
   integer shift (checked over each cutout's corners); otherwise the row is an error.
3. **Error rows decided from geometry**: no valid RA/Dec, outside every tile, a band without
   coverage, other pixel grids, more than ``max_nonfinite`` of the cutout off the tile's edge.

In the workers (one Ray read task per *piece*: a run of one tile's sources in strip order), each
image is opened once and read in strips through ``hdu.section`` (plain or tile-compressed), so
only the pixels around the sources are read or decompressed, never a whole tile. The cutouts of a
strip's sources are then sliced from it in memory: exactly the windows astropy's
``Cutout2D(mode="partial", fill_value=nan)`` cuts (its rounding rule, NaN off the image; the
tests compare against it), without the cost of a ``Cutout2D`` call per source (measured in
docs/io.md). The non-finite policy of :mod:`pipeline.io.pixels` then applies.

**Centring**: nothing is resampled: the cutout is the ``size`` x ``size`` block of tile
pixels whose geometric centre ``((size-1)/2, (size-1)/2)`` is nearest the source, so the source
lies within half a pixel of that centre (the offset is ``x - ceil(x - size/2) - (size-1)/2`` in
tile pixels). ``ra``/``dec`` are the catalogue's; ``index`` is the source's row in the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.data.datasource import Datasource

from pipeline.io import schema
from pipeline.io.decode import _CORRUPT_HINTS, CutoutReadError, ReadOptions, _finish, _is_image
from pipeline.io.files import (
    ReadFailure,
    _glob_regex,
    list_inputs,
    locate,
    retrying,
    uri_filesystem,
)
from pipeline.io.sources import SourceCatalog, load_catalog

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

BAND_FIELD = "{band}"
BAND_KEYWORDS = ("FILTER", "BAND")
GRID_TOLERANCE = 0.05  # px: bands closer than this to the reference grid share it
STRIP_BYTES = 32 << 20  # one strip section read per image and task at a time
BLOCK_BYTES = 32 << 20  # image bytes per read task (one output block)
_MIN_TASK_ROWS = 64


# ----------------------------------------------------------------------------- tile images
@dataclass(frozen=True)
class TileImage:
    """One band of one tile: an image HDU of a FITS file."""

    path: str  # local absolute path or URI
    hdu: int
    band: str  # "" when no band is named anywhere (one anonymous band)
    shape: tuple[int, int]  # (ny, nx)

    @property
    def name(self) -> str:
        return f"{self.path}[{self.hdu}]" if self.hdu else self.path


@contextlib.contextmanager
def open_tile(path: str, filesystem: Any = None):
    """The HDU list of a tile, headers read lazily and pixels only when sliced (``hdu.section``);
    local paths or URIs (through ``pyarrow.fs``, with seekable reads), opened with
    :func:`~pipeline.io.files.retrying`. Closed on exit."""
    from astropy.io import fits

    fs, where = locate(path, filesystem)
    # a transient failure to open (an endpoint's hiccup) is tried again; ReadFailure says whether
    # another run may work (a parse error, below, never)
    f = retrying(lambda: open(where, "rb") if fs is None else fs.open_input_file(where))
    try:
        with fits.open(f, memmap=False, lazy_load_hdus=True) as hdul:
            yield hdul
    finally:
        f.close()


def find_tiles(
    tiles: str | os.PathLike | Sequence[str | os.PathLike],
    bands: Sequence[str] | None = None,
    filesystem: Any = None,
) -> tuple[list[TileImage], list[Any], tuple[str, ...], list[str]]:
    """The tile images of ``tiles`` for ``bands`` (module docstring, step 1).

    Returns:
        ``(images, wcs, bands, skipped)``: the images, their celestial WCS (same order), the
        band names in order (``bands``, or as first found when None) and one note per file or
        HDU left out (no 2-D image, no WCS, no requested band, unreadable header).

    Raises:
        FileNotFoundError: a path or pattern that matches no file.
        ValueError: a requested band without any tile, or bands named by some files only.
    """
    bands = tuple(ReadOptions(bands=bands).bands or ()) or None
    filesystem = _tiles_filesystem(tiles, filesystem)
    files = _tile_files(tiles, bands, filesystem)
    # Header reads are I/O-bound (s3://): threads. FITSFixedWarning & co are silenced here, not
    # in the threads (warning filters are process-wide); the WCS check says what matters.
    with ThreadPoolExecutor(max_workers=16) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scanned = list(pool.map(lambda f: _scan(*f, bands, filesystem), files))
    images, wcs, skipped = [], [], []
    for found, notes in scanned:
        for image, w in found:
            images.append(image)
            wcs.append(w)
        skipped.extend(notes)
    named = {im.band for im in images}
    if bands is None:
        if "" in named and len(named) > 1:
            anonymous = sorted({im.path for im in images if not im.band})[:3]
            raise ValueError(f"some tiles name their band ({', '.join(sorted(named - {''}))}) and "
                             f"some do not ({', '.join(anonymous)}); pass bands")
        bands = tuple(dict.fromkeys(im.band for im in images))
    missing = [b for b in bands if b not in named]
    if missing or not images:
        why = "; ".join(skipped[:3]) + (f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else "")
        raise ValueError(f"no tile image for band(s) {missing or list(bands)} in {tiles!r}"
                         + (f" (left out: {why})" if why else ""))
    return images, wcs, bands, skipped


def _given(tiles) -> list[str]:
    return [os.fspath(t) for t in ([tiles] if isinstance(tiles, (str, os.PathLike)) else tiles)]


def _tiles_filesystem(tiles, filesystem):
    """The filesystem given, else the one a URI's query names
    (``s3://b/t_{band}.fits?endpoint_override=h:9000&scheme=http``), else None. The listed
    files' names drop the query, so the plan keeps this filesystem for every later open."""
    first = _given(tiles)[:1]
    if filesystem is None and first and "://" in first[0] and "?" in first[0]:
        return uri_filesystem(first[0])[0]
    return filesystem


def _tile_files(tiles, bands, filesystem) -> list[tuple[str, str | None]]:
    """``(file, band named by its path or None)`` for every file of ``tiles``."""
    given = _given(tiles)
    out: dict[str, str | None] = {}
    for item in given:
        if BAND_FIELD not in item:
            out.update((f, None) for f in list_inputs(item, filesystem).files)
        elif bands:
            # The longest band wins a file two patterns match ('*_H' and '*_NIR_H' both match
            # 'T_NIR_H.fits'), so 'H' never takes NIR_H's tiles when both are asked for.
            for band in sorted(bands, key=len):
                out.update((f, band) for f in list_inputs(item.replace(BAND_FIELD, band),
                                                          filesystem).files)
        else:
            files = list_inputs(item.replace(BAND_FIELD, "*"), filesystem).files
            regex = _band_regex(item.partition("?")[0] if "://" in item
                                else os.path.abspath(item))
            for f in files:
                m = regex.fullmatch(f.split("://", 1)[-1])
                if m:
                    out[f] = m.group("band")
    return list(out.items())


def _band_regex(pattern: str) -> re.Pattern:
    """The pattern as a regex with the band as a group; wildcards before it match as little as
    possible, so band names may contain '_' ('*_{band}.fits' gives NIR_H for 'T1_NIR_H.fits')."""
    path = pattern.split("://", 1)[-1]
    head, tail = path.split(BAND_FIELD, 1)
    left = _glob_regex(head).pattern.replace("[^/]*", "[^/]*?")
    return re.compile(left + r"(?P<band>[^/]+?)" + _glob_regex(tail).pattern)


def _scan(path: str, path_band: str | None, bands, filesystem) -> tuple[list, list[str]]:
    """The images of one file for the requested bands, with their WCS; notes on what is left out."""
    try:
        with open_tile(path, filesystem) as hdul:
            hdus = list(hdul)
            cands = [(i, h) for i, h in enumerate(hdus)
                     if _is_image(h) and len(h.shape) == 2 and 0 not in h.shape]
            if not cands:
                return [], [f"{path}: no 2-D image HDU"]
            picks = _pick_bands(cands, hdus[0].header, path_band, bands)
            if not picks:
                return [], [f"{path}: no HDU for band(s) {', '.join(bands)}"]
            found, notes = [], []
            for i, band in picks:
                w = _celestial_wcs(hdus[i].header, hdul)
                if w is None:
                    notes.append(f"{path}: HDU {i} has no celestial WCS")
                    continue
                found.append((TileImage(path, i, band, tuple(hdus[i].shape)), w))
            return found, notes
    except Exception as exc:  # an unreadable file is left out with its reason
        return [], [f"{path}: cannot read headers ({type(exc).__name__}: {exc})"]


def _band_named(hdu, primary) -> str | None:
    """The band an HDU names: EXTNAME ``<band>_FLUX``, else a FILTER/BAND keyword."""
    ext = str(hdu.header.get("EXTNAME", "")).strip()
    if ext.upper().endswith("_FLUX"):
        return ext[:-5]
    for header in (hdu.header, primary):
        for key in BAND_KEYWORDS:
            if str(header.get(key, "")).strip():
                return str(header[key]).strip()
    return None


def _pick_bands(cands, primary, path_band, bands) -> list[tuple[int, str]]:
    """(HDU index, band) of the images to use from one file's 2-D image HDUs ``cands``."""
    def by_extname(band):
        for i, h in cands:
            ext = str(h.header.get("EXTNAME", "")).strip().upper()
            if ext in (band.upper(), band.upper() + "_FLUX"):
                return i
        return None

    if path_band is not None:
        i = by_extname(path_band)
        return [(cands[0][0] if i is None else i, path_band)]
    named = [(i, _band_named(h, primary)) for i, h in cands]
    if bands:
        picks = []
        for band in bands:
            i = by_extname(band)
            if i is None:
                i = next((j for j, b in named if b is not None and b.upper() == band.upper()), None)
            if i is not None:
                picks.append((i, band))
        if not picks and len(bands) == 1 and all(b is None for _, b in named):
            picks = [(cands[0][0], bands[0])]  # one plain image, one band asked: that band
        return picks
    flux = [(i, b) for (i, h), (_, b) in zip(cands, named, strict=True)
            if str(h.header.get("EXTNAME", "")).upper().endswith("_FLUX")]
    if flux:
        return flux
    first: dict[str, int] = {}
    for i, b in named:
        if b is not None:
            first.setdefault(b, i)
    return [(i, b) for b, i in first.items()] or [(cands[0][0], "")]


def _celestial_wcs(header, hdul):
    from astropy.wcs import WCS

    try:
        w = WCS(header, hdul).celestial
    except Exception:
        return None
    return w if w.has_celestial and w.naxis == 2 else None


# ----------------------------------------------------------------------------- assignment
def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def _to_pixels(wcs, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions (integers at pixel centres) of ICRS positions, any WCS frame."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import skycoord_to_pixel

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        x, y = skycoord_to_pixel(SkyCoord(ra, dec, unit="deg", frame="icrs"), wcs, 0, "all")
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _to_sky(wcs, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from astropy.wcs.utils import pixel_to_skycoord

    sky = pixel_to_skycoord(x, y, wcs, 0, "all").icrs
    return sky.ra.deg, sky.dec.deg


def _footprint(wcs, shape) -> tuple[np.ndarray, float]:
    """Unit vector of the image centre and the angle (rad) that encloses the image."""
    ny, nx = shape
    xs, ys = np.meshgrid([-0.5, (nx - 1) / 2, nx - 0.5], [-0.5, (ny - 1) / 2, ny - 0.5])
    ra, dec = _to_sky(wcs, xs.ravel(), ys.ravel())
    vec = _unit_vectors(ra, dec)
    centre = vec[4]
    angle = float(np.arccos(np.clip(vec @ centre, -1, 1)).max())
    return centre, angle * 1.01 + 1e-6


def _distance_inside(x, y, shape) -> np.ndarray:
    """Pixels from the nearest edge of the image (negative: outside; NaN positions: -inf)."""
    ny, nx = shape
    d = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
    return np.where(np.isfinite(d), d, -np.inf)


def _window_start(pos: np.ndarray, size: int) -> np.ndarray:
    """First pixel of the ``size`` window ``Cutout2D`` cuts around ``pos`` (its rounding rule)."""
    return np.ceil(pos - size / 2).astype(np.int64)


def _off_fraction(x, y, shape, size) -> np.ndarray:
    """Fraction of each source's cutout window that lies outside the image."""
    ny, nx = shape
    x0, y0 = _window_start(x, size), _window_start(y, size)
    ox = np.clip(np.minimum(x0 + size, nx) - np.maximum(x0, 0), 0, size)
    oy = np.clip(np.minimum(y0 + size, ny) - np.maximum(y0, 0), 0, size)
    return 1.0 - (ox * oy) / float(size * size)


def _strip_rows(nx: int, size: int) -> int:
    """Rows of one strip section: STRIP_BYTES of float32 pixels, at least a cutout high."""
    return max(size, STRIP_BYTES // (4 * max(nx, 1)))


def _groups(key: np.ndarray, rows: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """``(value, rows)`` for each distinct value of ``key[rows]`` (rows in their order)."""
    rows = rows[np.argsort(key[rows], kind="stable")]
    for part in np.split(rows, np.flatnonzero(np.diff(key[rows])) + 1):
        if len(part):
            yield key[part[0]], part


# ----------------------------------------------------------------------------- the plan
@dataclass
class TilePlan:
    """Where every catalogue source is cut from (built by :func:`plan_tiles` on the driver).

    ``units`` are the resumable units of work in output order: each reference tile that has
    sources, then the catalogue itself for the rows that no tile takes (their ``source``).
    """

    catalog: SourceCatalog
    images: list[TileImage]
    bands: tuple[str, ...]
    size: int
    max_nonfinite: float
    filesystem: Any
    image: np.ndarray  # (n, B) image index per band, -1: none
    x: np.ndarray  # (n, B) pixel positions, aligned to the reference band's grid
    y: np.ndarray
    reason: np.ndarray  # (n,) error reason decided on the driver, None: cut it
    unit: np.ndarray  # (n,) index into units
    units: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def row_bytes(self) -> int:
        return 4 * len(self.bands) * self.size * self.size

    @property
    def spec(self) -> dict[str, Any]:
        """What decides the rows besides bands and size (a resumed run must match it)."""
        h = hashlib.blake2b(digest_size=8)  # a fingerprint, not a file hash
        for im in self.images:
            h.update(f"{im.path}|{im.hdu}|{im.band}|{im.shape}\n".encode())
        for arr in (self.catalog.ra, self.catalog.dec):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.catalog.ids.tolist()).encode())
        return {"tiles.catalog": self.catalog.name, "tiles.rows": len(self.catalog),
                "tiles.columns": self.catalog.extra.column_names,
                "tiles.max_nonfinite": self.max_nonfinite, "tiles.digest": h.hexdigest()}

    def counts(self) -> dict[str, int]:
        """Rows per unit (every catalogue row is in exactly one)."""
        return dict(zip(self.units, np.bincount(self.unit, minlength=len(self.units)).tolist(),
                        strict=True))

    def pieces(self, units: Sequence[str] | None = None, max_rows: int | None = None) -> list[Piece]:
        """The read tasks' work: each unit's rows in runs of at most ``max_rows`` (default: one
        output block, BLOCK_BYTES of images), made of whole strips of the reference image
        wherever a strip holds fewer sources, so each strip is read (decompressed) once."""
        max_rows = max_rows or max(1, BLOCK_BYTES // self.row_bytes)
        position = {u: i for i, u in enumerate(self.units)}
        wanted = None if units is None else {position[u] for u in units}
        out = []
        for u, rows in _groups(self.unit, np.arange(len(self.unit))):
            if wanted is not None and u not in wanted:
                continue
            ref = self.image[rows[0], 0]
            if ref < 0:  # the catalogue's own unit: error rows only
                out += [self._piece(self.units[u], rows[i:i + max_rows], 0)
                        for i in range(0, len(rows), max_rows)]
                continue
            ny, nx = self.images[ref].shape
            # Strips about max_rows sources high (at the mean density), within STRIP_BYTES.
            high = int(np.clip(max_rows * ny // len(rows), self.size, _strip_rows(nx, self.size)))
            strip = np.floor(np.maximum(self.y[rows, 0], 0) / high).astype(np.int64)
            order = np.lexsort((self.x[rows, 0], strip))
            rows, strip = rows[order], strip[order]
            start = 0
            while start < len(rows):  # up to max_rows, ending with a whole strip if that
                stop = min(start + max_rows, len(rows))  # leaves at least half a piece
                if stop < len(rows) and strip[stop] == strip[stop - 1]:
                    boundary = int(np.searchsorted(strip, strip[stop - 1]))
                    if boundary - start >= max(1, max_rows // 2):  # never an empty piece
                        stop = boundary
                out.append(self._piece(self.units[u], rows[start:stop], high))
                start = stop
        return out

    def _piece(self, source: str, rows: np.ndarray, strip_rows: int) -> Piece:
        used = np.unique(self.image[rows][self.image[rows] >= 0])
        local = np.full(len(self.images) + 1, -1)  # global -> piece image index; local[-1] = -1
        local[used] = np.arange(len(used))
        cat = self.catalog
        return Piece(source=source, rows=rows, ids=cat.ids[rows], ra=cat.ra[rows],
                     dec=cat.dec[rows], extra=cat.extra.take(rows),
                     images=tuple(self.images[k] for k in used), image=local[self.image[rows]],
                     x=self.x[rows], y=self.y[rows], reason=self.reason[rows], size=self.size,
                     strip_rows=strip_rows, max_nonfinite=self.max_nonfinite,
                     filesystem=self.filesystem)

    def dataset(self, units: Sequence[str] | None = None, *, strict: bool = False,
                max_rows: int | None = None,
                ray_remote_args: dict[str, Any] | None = None) -> ray.data.Dataset:
        """The rows of ``units`` (default: all) as a lazy Ray Dataset, one read task per piece.
        Pieces are at most one block and small enough for 4 read tasks per cluster CPU."""
        import ray

        from pipeline._ray import ensure_ray

        ensure_ray()
        if max_rows is None:
            n = sum(self.counts()[u] for u in (units or self.units))
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            max_rows = max(_MIN_TASK_ROWS, math.ceil(n / (4 * cpus)))
            max_rows = min(max_rows, max(1, BLOCK_BYTES // self.row_bytes))
        pieces = self.pieces(units, max_rows)
        source = TileDatasource(pieces, self.row_bytes, strict)
        return ray.data.read_datasource(source, override_num_blocks=max(1, len(pieces)),
                                        ray_remote_args=ray_remote_args or {})

    def cutouts(self, index: Sequence[int]) -> list[np.ndarray | None]:
        """The images of catalogue rows ``index`` (None for an error row), cut here on the
        driver: what the gallery shows for a few candidates."""
        rows = np.asarray(index, dtype=np.int64)
        if not len(rows):
            return []
        batch, _ = cut_piece(self._piece("gallery", rows, self.size))  # a few, far apart
        return [None if e else im for im, e in zip(batch[schema.IMAGE], batch[schema.ERROR],
                                                   strict=True)]


def plan_tiles(
    tiles: str | os.PathLike | Sequence[str | os.PathLike],
    catalog: SourceCatalog | Any,
    size: int = 64,
    bands: Sequence[str] | None = None,
    *,
    max_nonfinite: float = 0.1,
    filesystem: Any = None,
) -> TilePlan:
    """Find the tiles and assign every source of ``catalog`` to them, without Ray: what
    :func:`read_tiles` runs on the driver. ``catalog`` is a :class:`SourceCatalog`
    (:func:`pipeline.io.sources.load_catalog`, to choose its columns) or anything
    ``load_catalog`` reads with its default column names."""
    from scipy.spatial import cKDTree

    opts = ReadOptions(bands=bands, size=size, max_nonfinite=max_nonfinite)
    filesystem = _tiles_filesystem(tiles, filesystem)
    images, wcs, bands, skipped = find_tiles(tiles, opts.bands, filesystem)
    for note in skipped:
        log.warning("read_tiles: left out %s", note)
    cat = catalog if isinstance(catalog, SourceCatalog) else load_catalog(catalog)
    n, nb = len(cat), len(bands)
    valid = np.isfinite(cat.ra) & np.isfinite(cat.dec) & (np.abs(cat.dec) <= 90)
    image = np.full((n, nb), -1, dtype=np.int64)
    x = np.full((n, nb), np.nan)
    y = np.full((n, nb), np.nan)
    depth = np.full((n, nb), -np.inf)
    where = np.flatnonzero(valid)
    tree = cKDTree(_unit_vectors(cat.ra[where], cat.dec[where])) if len(where) else None
    for k, (im, w) in enumerate(zip(images, wcs, strict=True)):
        if tree is None:
            break
        b = bands.index(im.band)
        centre, angle = _footprint(w, im.shape)
        near = where[np.asarray(tree.query_ball_point(centre, 2 * math.sin(angle / 2)), dtype=int)]
        if not len(near):
            continue
        px, py = _to_pixels(w, cat.ra[near], cat.dec[near])
        d = _distance_inside(px, py, im.shape)
        better = (d > 0) & (d > depth[near, b])
        rows = near[better]
        image[rows, b], x[rows, b], y[rows, b], depth[rows, b] = k, px[better], py[better], d[better]

    reason = np.full(n, None, dtype=object)
    reason[~valid] = [f"no valid RA/Dec in the catalogue (ra={r}, dec={d})"
                      for r, d in zip(cat.ra[~valid], cat.dec[~valid], strict=True)]
    outside = valid & (image[:, 0] < 0)
    n_ref = sum(im.band == bands[0] for im in images)
    note = f"; {len(skipped)} file(s) left out, see the log" if skipped else ""
    reason[outside] = f"outside every {_label(bands[0])} tile ({n_ref} tiles){note}"
    _align_bands(image, x, y, reason, images, wcs, bands, opts.size)
    _edges(image, x, y, reason, images, bands, opts.size, opts.max_nonfinite)

    refs = sorted({images[k].path for k in np.unique(image[:, 0]) if k >= 0})
    units = refs + ([cat.name] if (image[:, 0] < 0).any() else [])
    position = {path: i for i, path in enumerate(refs)}
    unit_of_image = np.array([position.get(im.path, -1) for im in images]
                             + [len(refs)])  # image -1 (no tile): the catalogue's unit
    unit = unit_of_image[image[:, 0]]
    return TilePlan(cat, images, bands, opts.size, opts.max_nonfinite, filesystem, image, x, y,
                    reason, unit, units, skipped)


def _label(band: str) -> str:
    return band or "image"


def _align_bands(image, x, y, reason, images, wcs, bands, size) -> None:
    """Put every band's position on the reference band's grid (an integer shift) or give the
    row an error: a band that does not cover the source, or one on another pixel grid."""
    ok = image[:, 0] >= 0
    h = size / 2
    corners = ((-h, -h), (h, -h), (-h, h), (h, h), (0.0, 0.0))
    for b in range(1, len(bands)):
        gap = ok & (image[:, b] < 0) & _no_error(reason)
        reason[gap] = f"not covered by any {_label(bands[b])} tile"
        pair = image[:, 0] * (len(images) + 1) + image[:, b]
        for _, rows in _groups(pair, np.flatnonzero(ok & (image[:, b] >= 0))):
            r, k = image[rows[0], 0], image[rows[0], b]
            shift_x = np.round(x[rows, b] - x[rows, 0])
            shift_y = np.round(y[rows, b] - y[rows, 0])
            worst = np.zeros(len(rows))
            for ox, oy in corners:
                ra, dec = _to_sky(wcs[r], x[rows, 0] + ox, y[rows, 0] + oy)
                bx, by = _to_pixels(wcs[k], ra, dec)
                worst = np.maximum(worst, np.hypot(bx - (x[rows, 0] + ox + shift_x),
                                                   by - (y[rows, 0] + oy + shift_y)))
            bad = ~(worst <= GRID_TOLERANCE)
            x[rows, b] = x[rows, 0] + shift_x
            y[rows, b] = y[rows, 0] + shift_y
            for i, dev in zip(rows[bad], worst[bad], strict=True):
                if reason[i] is None:
                    reason[i] = (
                        f"band {_label(bands[b])} ({images[k].name}) is on another pixel grid "
                        f"than {_label(bands[0])} ({images[r].name}): pixels {_scales(wcs, r, k)}"
                        f" land up to {dev:.2f} px apart over the cutout; reproject the tiles "
                        "onto one grid")


def _no_error(reason: np.ndarray) -> np.ndarray:
    """Rows without an error (yet)."""
    return np.array([r is None for r in reason], dtype=bool)


def _scales(wcs, r: int, k: int) -> str:
    from astropy.wcs.utils import proj_plane_pixel_scales

    a, b = (proj_plane_pixel_scales(wcs[i]).mean() * 3600 for i in (r, k))
    return f"of {a:.3g}\" and {b:.3g}\"" if not math.isclose(a, b, rel_tol=1e-6) else "of one size"


def _edges(image, x, y, reason, images, bands, size, max_nonfinite) -> None:
    """Rows whose cutout lies more than ``max_nonfinite`` off their tile's edge are errors."""
    shapes = np.array([im.shape for im in images], dtype=np.int64).reshape(-1, 2)
    for b in range(len(bands)):
        rows = np.flatnonzero((image[:, b] >= 0) & _no_error(reason))
        k = image[rows, b]
        off = _off_fraction(x[rows, b], y[rows, b], (shapes[k, 0], shapes[k, 1]), size)
        for i, f in zip(rows[off > max_nonfinite], off[off > max_nonfinite], strict=True):
            tile = images[image[i, b]]
            named = "" if tile.path == images[image[i, 0]].path else f" ({tile.name})"
            reason[i] = (f"on the edge of the {_label(bands[b])} tile{named}: {100 * f:.1f}% of "
                         f"the {size}x{size} cutout lies outside it "
                         f"(more than max_nonfinite={max_nonfinite:g})")


# ----------------------------------------------------------------------------- cutting
@dataclass
class Piece:
    """A read task's work: catalogue rows of one unit with where to cut them (see TilePlan)."""

    source: str
    rows: np.ndarray
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    extra: Any  # pyarrow.Table of the pass-through columns
    images: tuple[TileImage, ...]
    image: np.ndarray  # (m, B) index into images, -1 none
    x: np.ndarray
    y: np.ndarray
    reason: np.ndarray
    size: int
    strip_rows: int  # rows of tile read per section (the sources in one are cut together)
    max_nonfinite: float
    filesystem: Any = None

    def __len__(self) -> int:
        return len(self.rows)


def cut_piece(piece: Piece, strict: bool = False) -> tuple[dict[str, np.ndarray], Any]:
    """Cut a piece's sources: ``(batch, extra)``, the base columns as a NumPy batch and the
    pass-through columns as a ``pyarrow.Table`` of the same rows.

    Each image is opened once and read strip by strip through ``hdu.section``; a tile that
    cannot be opened or read makes error rows of the sources that needed it.
    """
    m, nb = piece.image.shape
    size = piece.size
    stack = np.zeros((m, nb, size, size), dtype=np.float32)
    errors: list[str | None] = list(piece.reason)
    transient: set[int] = set()  # rows of a tile whose filesystem failed: the rest are permanent
    for k, im in enumerate(piece.images):
        for b in range(nb):
            rows = np.flatnonzero((piece.image[:, b] == k)
                                  & np.array([e is None for e in errors]))
            if not len(rows):
                continue
            try:
                cut, failed = _cut_image(im, piece.x[rows, b], piece.y[rows, b], size,
                                         piece.strip_rows, piece.filesystem)
            except _Unreadable as exc:
                for i in rows:
                    errors[i] = str(exc)
                if exc.kind == schema.TRANSIENT:
                    transient.update(rows.tolist())
                continue
            stack[rows, b] = cut
            for i, why in zip(rows, failed, strict=True):
                if why is not None:
                    errors[i] = why
    stack = _finish(stack, errors, ReadOptions(max_nonfinite=piece.max_nonfinite))
    kinds = [None if e is None else schema.TRANSIENT if i in transient else schema.PERMANENT
             for i, e in enumerate(errors)]
    batch = {
        schema.ID: piece.ids,
        schema.RA: piece.ra,
        schema.DEC: piece.dec,
        schema.IMAGE: stack,
        schema.SOURCE: np.full(m, piece.source, dtype=object),
        schema.INDEX: piece.rows.astype(np.int64),
        schema.ERROR: np.array([None if e is None else f"{piece.source}: {e}" for e in errors],
                               dtype=object),
        schema.ERROR_KIND: np.array(kinds, dtype=object),
    }
    if strict:
        first = next((e for e in batch[schema.ERROR] if e is not None), None)
        if first is not None:
            raise CutoutReadError(first)
    return batch, piece.extra


class _Unreadable(Exception):
    """A tile image that cannot be opened at all; ``kind``: transient (the filesystem failed
    in a way another try may mend: network, timeout) or permanent (missing, not FITS)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _cut_image(im: TileImage, xs, ys, size: int, strip_rows: int,
               filesystem) -> tuple[np.ndarray, list]:
    """Cutouts of one image at pixel positions ``xs, ys``, read strip by strip: one
    ``hdu.section`` read per strip covers the windows of all its sources, which are then sliced
    from it (``Cutout2D``'s windows, NaN off the image as in its partial mode)."""
    ny, nx = im.shape
    out = np.empty((len(xs), size, size), dtype=np.float32)
    failed: list[str | None] = [None] * len(xs)
    strips = np.floor(ys / strip_rows).astype(np.int64)
    x0s, y0s = _window_start(xs, size), _window_start(ys, size)
    with warnings.catch_warnings(record=True) as caught, contextlib.ExitStack() as files:
        warnings.simplefilter("always")
        try:
            section = files.enter_context(open_tile(im.path, filesystem))[im.hdu].section
        except Exception as exc:
            kind = exc.kind if isinstance(exc, ReadFailure) else schema.PERMANENT
            why = exc.reason if isinstance(exc, ReadFailure) else _why(exc, caught)
            raise _Unreadable(f"cannot open {im.name} ({why})", kind) from exc
        for _, sel in _groups(strips, np.arange(len(xs))):
            wx0, wx1 = x0s[sel].min(), x0s[sel].max() + size  # the windows' extent ...
            wy0, wy1 = y0s[sel].min(), y0s[sel].max() + size
            bx0, bx1, by0, by1 = max(wx0, 0), min(wx1, nx), max(wy0, 0), min(wy1, ny)  # ... on it
            # Whole rows are one contiguous read; a narrow box is read row by row (each row a
            # Python-level read in astropy), which only pays off for a few sources.
            rx0, rx1 = (0, nx) if 4 * (bx1 - bx0) >= nx else (bx0, bx1)
            try:
                block = np.asarray(section[by0:by1, rx0:rx1], dtype=np.float32)
                block = block[:, bx0 - rx0:bx1 - rx0]
            except Exception as exc:
                why = (f"cannot read pixels [{by0}:{by1}, {bx0}:{bx1}] of {im.name} "
                       f"({_why(exc, caught)})")
                for i in sel:
                    failed[i] = why
                continue
            if (bx0, bx1, by0, by1) != (wx0, wx1, wy0, wy1):  # windows run off the image
                padded = np.full((wy1 - wy0, wx1 - wx0), np.nan, dtype=np.float32)
                padded[by0 - wy0:by1 - wy0, bx0 - wx0:bx1 - wx0] = block
                block = padded
            # Plain slices: a 2-D copy each (numpy's fancy indexing of a window view is ~10x slower).
            for i, y0, x0 in zip(sel.tolist(), (y0s[sel] - wy0).tolist(),
                                 (x0s[sel] - wx0).tolist(), strict=True):
                out[i] = block[y0:y0 + size, x0:x0 + size]
    return out, failed


def _why(exc: Exception, caught) -> str:
    """The cause of a failed read: astropy's truncation warning if there was one."""
    for w in caught:
        text = " ".join(str(w.message).split())
        if any(hint in text.lower() for hint in _CORRUPT_HINTS):
            return f"truncated or corrupt FITS file: {text}"
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- Ray
class TileDatasource(Datasource):
    """Ray Data datasource: one read task per :class:`Piece`, one block per task."""

    def __init__(self, pieces: list[Piece], row_bytes: int, strict: bool = False):
        super().__init__()
        self.pieces, self.row_bytes, self.strict = pieces, row_bytes, strict

    def get_name(self) -> str:
        return "ReadTiles"

    def estimate_inmemory_data_size(self) -> int:
        return sum(len(p) for p in self.pieces) * self.row_bytes

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        return [
            ReadTask(functools.partial(_read_piece, p, self.strict),
                     BlockMetadata(num_rows=len(p), size_bytes=len(p) * self.row_bytes,
                                   exec_stats=None,
                                   input_files=tuple(dict.fromkeys(im.path for im in p.images))),
                     per_task_row_limit=per_task_row_limit)
            for p in self.pieces
        ]


def _read_piece(piece: Piece, strict: bool) -> Iterator[Any]:
    yield to_block(*cut_piece(piece, strict))


def to_block(batch: dict[str, np.ndarray], extra: Any):
    """A ``pyarrow.Table`` block: the base columns (all-null ones typed as strings, like
    ``read_cutouts``' blocks), then the catalogue's columns as they were typed in the catalogue
    (so every block has the same schema)."""
    from ray.data.block import BlockAccessor

    table = schema.string_nulls(BlockAccessor.batch_to_block(batch))
    for name in extra.column_names:
        table = table.append_column(name, extra.column(name))
    return table


# ----------------------------------------------------------------------------- public API
def read_tiles(
    tiles: str | os.PathLike | Sequence[str | os.PathLike],
    catalog: Any,
    size: int = 64,
    bands: Sequence[str] | None = None,
    *,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    max_nonfinite: float = 0.1,
    strict: bool = False,
    filesystem: Any = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """Cut a cutout around every catalogue source from survey tiles into a Ray Dataset.

    Args:
        tiles: FITS tiles with a celestial WCS: files, directories, globs or URIs, or a pattern
            with a ``{band}`` field (``"tiles/*_{band}.fits"``); plain or tile-compressed
            (``CompImageHDU``). Bands come from the pattern, else from EXTNAME (``VIS`` /
            ``VIS_FLUX``) or a FILTER/BAND keyword (see :func:`find_tiles`).
        catalog: Parquet / CSV / FITS table path or URI, ``ray.data.Dataset``, ``pyarrow.Table``,
            pandas DataFrame or dict (see :func:`pipeline.io.sources.load_catalog`).
        size: cutout side in pixels.
        bands: bands in order, e.g. ``["VIS"]``; the first is the reference (the row's
            ``source``). None: the bands found, in the order first found.
        columns: catalogue columns to carry into the rows (None: all).
        id_column, ra_column, dec_column: catalogue column names (None: common names).
        max_nonfinite: fraction of a cutout that may be NaN/inf or off the tile's edge in any
            band; more makes an error row, less is filled with the band median.
        strict: raise :class:`~pipeline.io.CutoutReadError` on the first error row instead.
        filesystem: a ``pyarrow.fs.FileSystem`` for the tiles (default: from the paths).
        ray_remote_args: Ray options of the read tasks.

    Returns:
        A lazy Dataset: id, ra, dec, image (float32 bands x size x size), source (the
        reference tile, or the catalogue for rows no tile covers), index (catalogue row), error,
        then the catalogue's columns. Every catalogue row gives exactly one row.
    """
    cat = load_catalog(catalog, id_column=id_column, ra_column=ra_column, dec_column=dec_column,
                       columns=columns)
    plan = plan_tiles(tiles, cat, size, bands, max_nonfinite=max_nonfinite, filesystem=filesystem)
    return plan.dataset(strict=strict, ray_remote_args=ray_remote_args)
