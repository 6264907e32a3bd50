"""Sky facts of a cutout from its FITS header: its position (the WCS at the centre pixel, else
keywords) and its pixel scale (:func:`pixel_scale`).

Order of preference (first that gives finite numbers wins), for the image's own header and then
the file's PRIMARY header:

1. the celestial part of the WCS (``astropy.wcs``) evaluated at the geometric centre
   ``((W-1)/2, (H-1)/2)`` (0-based); RA/DEC axes in ICRS or FK5 are taken as they are (they differ
   by < 0.1"), other frames (FK4, galactic, ecliptic) are transformed to ICRS;
2. object keywords ``RA_OBJ/DEC_OBJ``, ``RA/DEC``, ``OBJRA/OBJDEC``, ``RA_TARG/DEC_TARG``
   (degrees, or sexagesimal strings with RA in hours);
3. ``CRVAL1/CRVAL2`` when ``CTYPE1/CTYPE2`` name RA/DEC axes (the reference point, last resort).

Unknown positions are NaN, never a guess.
"""

from __future__ import annotations

import math
import warnings

_OBJECT_KEYS = (("RA_OBJ", "DEC_OBJ"), ("RA", "DEC"), ("OBJRA", "OBJDEC"), ("RA_TARG", "DEC_TARG"))
_SCALE_KEYS = ("PIXSCALE", "PIXSCAL")  # arcsec per pixel
NAN2 = (math.nan, math.nan)


def centre_radec(header, ny: int, nx: int, fallback=None) -> tuple[float, float]:
    """(ra, dec) in degrees of the centre of an ``ny`` x ``nx`` image described by ``header``."""
    for hdr in (header, fallback):
        if hdr is not None:
            pos = _from_wcs(hdr, ny, nx)
            if _finite(pos):
                return pos
    for hdr in (header, fallback):
        if hdr is not None:
            pos = _from_keywords(hdr)
            if _finite(pos):
                return pos
    return NAN2


def _finite(pos: tuple[float, float]) -> bool:
    return math.isfinite(pos[0]) and math.isfinite(pos[1])


def _from_wcs(header, ny: int, nx: int) -> tuple[float, float]:
    if "CTYPE1" not in header and "CTYPE2" not in header:
        return NAN2
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
        if not wcs.has_celestial or wcs.naxis != 2:
            return NAN2
        lon, lat = wcs.wcs.lng, wcs.wcs.lat
        world = wcs.wcs_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
        ctype = wcs.wcs.ctype[lon].upper()
        if ctype.startswith("RA") and wcs.wcs.radesys.strip().upper() in ("", "ICRS", "FK5"):
            return float(world[lon]) % 360.0, float(world[lat])
        from astropy.wcs.utils import pixel_to_skycoord

        sky = pixel_to_skycoord((nx - 1) / 2, (ny - 1) / 2, wcs).icrs
        return float(sky.ra.deg), float(sky.dec.deg)
    except Exception:  # a broken WCS falls back to keywords
        return NAN2


def _angle(value, hours: bool) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        import astropy.units as u
        from astropy.coordinates import Angle

        try:
            return float(Angle(str(value).strip(), unit=u.hourangle if hours else u.deg).deg)
        except Exception:
            return math.nan


def _from_keywords(header) -> tuple[float, float]:
    for rk, dk in _OBJECT_KEYS:
        if rk in header and dk in header:
            pos = _angle(header[rk], hours=True), _angle(header[dk], hours=False)
            if _finite(pos):
                return pos
    c1, c2 = str(header.get("CTYPE1", "")).upper(), str(header.get("CTYPE2", "")).upper()
    if c1.startswith("RA") and c2.startswith("DEC") and "CRVAL1" in header and "CRVAL2" in header:
        return _angle(header["CRVAL1"], False), _angle(header["CRVAL2"], False)
    return NAN2


def pixel_scale(header, fallback=None) -> float:
    """Arcsec per pixel of an image: its celestial WCS (the geometric mean of both axes'
    ``proj_plane_pixel_scales``), else a ``PIXSCALE``/``PIXSCAL`` keyword, first in ``header``
    and then in ``fallback`` (the PRIMARY header); NaN when none says."""
    for hdr in (header, fallback):
        if hdr is not None:
            scale = _scale_from_wcs(hdr)
            if math.isfinite(scale):
                return scale
    for hdr in (header, fallback):
        for key in _SCALE_KEYS if hdr is not None else ():
            try:
                scale = float(hdr[key]) if key in hdr else math.nan
            except (TypeError, ValueError):
                continue
            if math.isfinite(scale) and scale > 0:
                return scale
    return math.nan


def _scale_from_wcs(header) -> float:
    if "CTYPE1" not in header and "CTYPE2" not in header:
        return math.nan
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
        if not wcs.has_celestial or wcs.naxis != 2:
            return math.nan
        sx, sy = (float(v) * 3600 for v in proj_plane_pixel_scales(wcs))
    except Exception:  # a broken WCS falls back to keywords
        return math.nan
    return math.sqrt(sx * sy) if sx > 0 and sy > 0 else math.nan
