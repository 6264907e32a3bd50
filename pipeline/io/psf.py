"""A cutout file's own point-spread functions: ``<BAND>_PSF`` extensions (Euclid MER cutouts).

Survey cutout services ship the PSF beside the pixels: a Euclid MER cutout holds, for every band,
``<BAND>_FLUX``, ``<BAND>_RMS`` and ``<BAND>_PSF`` (a small image on the same pixel grid).
Whoever paints simulated light onto a real cutout (``pipeline.simulate.inject``) convolves with
that PSF when the file has one.
"""

from __future__ import annotations

import numpy as np


def read_psfs(path: str, bands) -> list[np.ndarray | None]:
    """The normalised PSF image of each band in ``bands`` from ``path`` (``<BAND>_PSF``
    extension, case-insensitive), None for a band the file has no PSF for or when ``bands`` is
    None. Odd-sized square kernels only (others are None: their centre is ambiguous)."""
    from astropy.io import fits

    from pipeline.io.files import locate

    if not bands:
        return []
    fs, where = locate(str(path), None)
    with (open(where, "rb") if fs is None else fs.open_input_file(where)) as f, \
            fits.open(f, memmap=False) as hdul:
        found = {h.name.upper(): h for h in hdul}
        out = []
        for band in bands:
            hdu = found.get(f"{str(band).upper()}_PSF")
            k = None if hdu is None or hdu.data is None else np.asarray(hdu.data, np.float64)
            if k is None or k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 \
                    or not np.isfinite(k).all() or k.sum() <= 0:
                out.append(None)
            else:
                out.append(np.clip(k, 0, None) / np.clip(k, 0, None).sum())
    return out
