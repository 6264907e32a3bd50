"""Fit observed cutouts to a model's geometry: its bands (by name), pixel scale and size.

A checkpoint's config says what its network takes (``bands``, ``pixel_scale`` in arcsec/px,
``size`` in pixels); survey files come in their own. :func:`fit_rows` turns reader rows (with
``pixel_scale`` and ``band_names``, ``pipeline.io.ReadOptions(geometry=True)``) into the model's
input, row by row, and says why for every row it cannot: the cascade's model stages call it on
every batch, so a file of another survey becomes error rows naming the file and what the model
wants, never a dead job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.io import schema
from pipeline.surveys import match_bands

#: a cutout that covers less than this fraction of the model's side (after resampling) is an
#: error row: the rest would be padding, and the model would score mostly invented sky
MIN_FILL = 0.5
_SAME_SCALE = 1e-3  # relative difference of pixel scales taken as equal (no resampling)


@dataclass
class Fitted:
    """Rows fitted to a model: ``images`` (N, B, S, S) float32 (zeros where ``errors`` is
    set), ``factor`` (N,) the resampling factor (native pixel scale / the model's; NaN where
    the rows carried no pixel scale or failed), ``errors`` (N,) None or the reason."""

    images: np.ndarray
    factor: np.ndarray
    errors: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def wants(config: dict, survey: str | None = None) -> str:
    """What a checkpoint takes, for messages: 'lens-detect model (ground-gri) wants bands
    g,r,i at 0.2"/px, 64x64 px'."""
    who = f" ({survey})" if survey else ""
    return f"{config['task']} model{who} wants {takes(config)}"


def takes(config: dict) -> str:
    """A checkpoint's input geometry, for messages: 'bands g,r,i at 0.2"/px, 64x64 px'."""
    size = config["size"]
    return f"bands {','.join(config['bands'])} at {config['pixel_scale']:.4g}\"/px, {size}x{size} px"


def fit_cutouts(images: np.ndarray, pixel_scale: float, config: dict) -> np.ndarray:
    """Resample (N, B, H, W) cutouts taken at ``pixel_scale`` arcsec/px to the model's pixel
    scale, then centre-crop (or pad with NaN, which normalisation treats as sky) to its size.

    Bilinear, anti-aliased when shrinking. Flux per pixel is not conserved, and need not be:
    normalisation is unit-free and re-measures sky and noise after resampling.
    """
    import torch

    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"images must be (N, bands, H, W), got shape {tuple(x.shape)}")
    factor = float(pixel_scale) / float(config["pixel_scale"])
    if abs(factor - 1) > _SAME_SCALE:
        h, w = _resampled(x.shape[-2:], factor)
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                            antialias=factor < 1)
    size = int(config["size"])
    out = np.full((*x.shape[:2], size, size), np.nan, np.float32)
    h, w = x.shape[-2:]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    oy, ox = (size - ch) // 2, (size - cw) // 2
    out[..., oy : oy + ch, ox : ox + cw] = x[..., y0 : y0 + ch, x0 : x0 + cw].numpy()
    return out


def _resampled(shape, factor: float) -> tuple[int, int]:
    """Side lengths of an (H, W) image resampled by ``factor``."""
    if abs(factor - 1) <= _SAME_SCALE:
        return int(shape[0]), int(shape[1])
    return tuple(max(1, round(int(s) * factor)) for s in shape)


def alias_bands(names, aliases: dict[str, str] | None) -> list[str]:
    """Band ``names`` with the user's ``aliases`` (file band -> model band, any case) applied:
    ``["G"]`` with ``{"g": "VIS"}`` is ``["VIS"]``."""
    lower = {k.lower(): v for k, v in (aliases or {}).items()}
    return [lower.get(n.strip().lower(), n) for n in names]


def bands_problem(config: dict, bands, aliases: dict[str, str] | None = None) -> str | None:
    """Why rows read with only ``bands`` (the user's ``--bands``) cannot feed a checkpoint's
    model (None: they can): its bands must be among them by name (:func:`match_bands`), after
    ``aliases``. Without this a one-band read of another band (``--bands G`` on unnamed planes)
    would be taken in order and scored as if it were the model's band."""
    if bands is None:
        return None
    try:
        match_bands(config["bands"], alias_bands(bands, aliases), len(bands))
    except ValueError:
        wanted = ",".join(config["bands"])
        return (f"{wants(config)}, but --bands {' '.join(bands)} reads other bands: read "
                f"{wanted} (or leave --bands out), choose another --survey or checkpoint, or, "
                f"if they are the same band, say so with --band-alias "
                f"{bands[0]}={config['bands'][0]}")
    return None


def fit_rows(rows: dict, config: dict, survey: str | None = None,
             aliases: dict[str, str] | None = None) -> Fitted:
    """Fit reader rows to the geometry of a checkpoint's ``config``.

    Per row: pick the model's bands (:func:`pipeline.surveys.match_bands`: by name when the
    file names them, else in order when the count matches), resample from the row's
    ``pixel_scale`` to the model's (:func:`fit_cutouts`), centre-crop/pad to its size; the
    rows' band names are first renamed by the user's ``aliases`` (:func:`alias_bands`). Rows
    without a ``pixel_scale`` column (read without geometry) are taken as they are when their
    shape is the model's; rows whose image an earlier stage replaced by its model's output (a
    finite ``image_scale``: the denoiser's) must be at this model's geometry.

    A row becomes an error ("<source> (cutout <index>): <model> wants ...; <why not>") when its
    bands do not match, its pixel scale is unknown, or it would cover less than
    :data:`MIN_FILL` of the model's side after resampling.
    """
    images = rows[schema.IMAGE]
    n = len(images)
    nb, size, scale = len(config["bands"]), int(config["size"]), float(config["pixel_scale"])
    scales, names, fitted = (rows.get(c) for c in (schema.PIXEL_SCALE, schema.BAND_NAMES,
                                                   schema.IMAGE_SCALE))
    out = np.zeros((n, nb, size, size), np.float32)
    factor = np.full(n, np.nan)
    errors = np.full(n, None, dtype=object)
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        shape = np.shape(images[i])
        try:
            if fitted is not None and math.isfinite(fitted[i]):  # an earlier stage's output
                if shape != (nb, size, size) or not abs(fitted[i] / scale - 1) <= _SAME_SCALE:
                    raise ValueError(f"an earlier stage made it {_shape(shape)} at "
                                     f"{fitted[i]:.4g}\"/px")
                out[i] = images[i]
                if scales is not None:
                    factor[i] = float(scales[i]) / fitted[i]
            elif scales is None:  # rows read without geometry: the caller fitted them
                if shape != (nb, size, size):
                    raise ValueError(f"it is {_shape(shape)} with no pixel scale (read it with "
                                     "geometry=True, or fit it with fit_cutouts)")
                out[i] = images[i]
            else:
                band_names = (alias_bands(names[i].split(","), aliases)
                              if names is not None and names[i] else None)
                picks = tuple(match_bands(config["bands"], band_names, shape[0]))
                s = float(scales[i])
                if not (math.isfinite(s) and s > 0):
                    raise ValueError("pixel scale unknown (no celestial WCS, PIXSCALE or CDELT "
                                     "keywords): pass --pixel-scale ARCSEC (Python: pixel_scale=)")
                h, w = _resampled(shape[1:], s / scale)
                if min(h, w) < MIN_FILL * size:
                    raise ValueError(f"{shape[1]}x{shape[2]} px at {s:.4g}\"/px is {h}x{w} px at "
                                     f"the model's scale, less than {MIN_FILL:.0%} of its {size}")
                groups.setdefault((shape, picks, s), []).append(i)
        except ValueError as exc:
            errors[i] = f"{_where(rows, i)}{wants(config, survey)}; {exc}"
    for (_, picks, s), idx in groups.items():  # one resampling call per geometry
        if isinstance(images, np.ndarray) and images.dtype != object:
            stack = images[idx][:, list(picks)]
        else:
            stack = np.stack([np.asarray(images[i])[list(picks)] for i in idx])
        out[idx] = fit_cutouts(stack, s, config)
        factor[idx] = s / scale
    return Fitted(out, factor, errors)


def _shape(shape) -> str:
    b = shape[0] if len(shape) == 3 else 1
    return f"{b} band{'s' * (b != 1)} of {shape[-2]}x{shape[-1]} px"


def _where(rows: dict, i: int) -> str:
    """'<source> (cutout <index>): ' of row ``i`` (empty without those columns)."""
    if schema.SOURCE not in rows:
        return ""
    index = f" (cutout {rows[schema.INDEX][i]})" if schema.INDEX in rows else ""
    return f"{rows[schema.SOURCE][i]}{index}: "
