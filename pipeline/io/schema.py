"""The row schema shared by reading, training and inference: every column name the layers share.

One row per cutout. Every row carries every base column; a row that could not be read has
``error`` set to "<file>: <reason>" and an ``image`` that must not be used (all zeros).
Stages compute only on rows where ``error`` is null and pass the others through untouched,
so ``rows in = good rows + error rows`` holds end to end.
"""

from __future__ import annotations

import numpy as np

ID = "id"  # str, unique per cutout: "<file stem>:<index>" unless the file gives ids
RA = "ra"  # float64 degrees (ICRS), NaN when unknown
DEC = "dec"  # float64 degrees (ICRS), NaN when unknown
IMAGE = "image"  # float32 tensor, bands x H x W
SOURCE = "source"  # str, the file the row came from (path or URI as given)
INDEX = "index"  # int64, HDU number or cube slice within SOURCE
ERROR = "error"  # str or None

BASE_COLUMNS = (ID, RA, DEC, IMAGE, SOURCE, INDEX, ERROR)

CLEAN = "clean"  # float32 tensor like IMAGE: the noiseless image of a simulated cube shard
CANDIDATE = "is_candidate"  # bool: the lens finder's cut (written by LensDetect, read by Substructure)


def good_mask(batch: dict) -> np.ndarray:
    """Boolean mask of rows in a NumPy batch that were read without error."""
    err = batch.get(ERROR)
    n = len(batch[ID])
    if err is None:
        return np.ones(n, dtype=bool)
    # Ray Data turns an all-null string column into float NaN: NaN means "no error" too.
    return np.array([e is None or e == "" or (isinstance(e, float) and np.isnan(e)) for e in err],
                    dtype=bool)
