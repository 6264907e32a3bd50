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
KIND = "kind"  # str: of an error row, what kind of failure (the errors/ table's last column)

BASE_COLUMNS = (ID, RA, DEC, IMAGE, SOURCE, INDEX, ERROR)

# Why a row is an error, for what a rerun does with it (docs/io.md, *Error kinds*): a transient
# error (network, timeout, permission, a remote open) may go away, so the file is read again
# by the next run; a permanent one (corrupt, truncated, wrong shape, all NaN, missing band...)
# stays until the file changes. The readers set it on their error rows (null on good rows); a
# writer takes an error row without one as permanent. In rows it is ERROR_KIND (simulated
# shards carry a label named "kind"); in the errors/ files, KIND.
ERROR_KIND = "error_kind"
KIND = "kind"
TRANSIENT, PERMANENT = "transient", "permanent"
ERROR_KINDS = (TRANSIENT, PERMANENT)

CLEAN = "clean"  # float32 tensor like IMAGE: the noiseless image of a simulated cube shard
# Label columns of labelled (simulated) data: written by pipeline.simulate, learnt by the tasks of
# pipeline.models.tasks; a class column holds the index of its class name.
IS_LENS = "is_lens"  # 0/1
SNR_ARCS = "snr_arcs"  # float: S/N of a simulated lens's arcs (pipeline.simulate.noise.arc_snr)
SUBSTRUCTURE_CLASS = "substructure"  # index into SUBSTRUCTURE_CLASSES
SUBSTRUCTURE_CLASSES = ("no_sub", "cdm", "vortex")

PIXEL_SCALE = "pixel_scale"  # float64 arcsec/px of the image as read (native), NaN when unknown (geometry=True)
BAND_NAMES = "band_names"  # str, the image's bands ("VIS", "g,r,i"), None when unnamed (geometry=True)
# Written by every model stage for the rows it computes (pipeline.models.fit, pipeline.stages):
RESAMPLE = "resample_factor"  # float64: native pixel scale / the model's, i.e. model pixels per native pixel; NaN: taken as it was
DENOISED = "denoised"  # float32 image: the denoise stage's output at its model's geometry, read by models trained on it
IMAGE_SCALE = "image_scale"  # float64 arcsec/px of DENOISED (the denoiser's pixel scale); NaN where not computed
SURVEY = "survey"  # str: the survey whose models scored the row (pipeline.surveys), None for custom checkpoints
CANDIDATE = "is_candidate"  # bool: the lens finder's cut (written by LensDetect, read by Substructure)


PROVENANCE_PREFIX = "model_"  # + a stage's name: which weights computed the row's columns


def provenance_column(stage: str) -> str:
    """The provenance column of a stage: ``model_lens_detect`` for "lens-detect"."""
    return PROVENANCE_PREFIX + stage.replace("-", "_")


# ----------------------------------------------------------------------------- nulls
# Arrow gives an all-null column the type "null", which NumPy has no dtype for: Ray Data hands
# it to a NumPy batch function as float NaN, and blocks or files with and without it disagree
# on the schema. The two functions below are the one fix, applied where batches enter a stage
# (restore_nulls) and where tables are made (string_nulls).
_STRINGS = (ERROR, ERROR_KIND, BAND_NAMES)  # the reader's string columns, null on many rows


def restore_nulls(batch: dict) -> dict:
    """``batch`` with the nulls of its string columns (``error``, its kind, ``band_names``)
    back (None) where a column arrived all-null, as float NaN."""
    nulls = {c: np.full(len(batch[ID]), None, dtype=object) for c in _STRINGS
             if c in batch and np.asarray(batch[c]).dtype.kind == "f"}
    return {**batch, **nulls} if nulls else batch


def string_nulls(table):
    """A pyarrow table whose all-null (null-typed) columns are typed as strings, so every
    block and file of one job has the same schema."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def good_mask(batch: dict) -> np.ndarray:
    """Boolean mask of rows in a NumPy batch that were read without error (a null error: None,
    "" or a NaN that a conversion put in its place)."""
    err = batch.get(ERROR)
    if err is None:
        return np.ones(len(batch[ID]), dtype=bool)
    if np.asarray(err).dtype.kind == "f":  # an all-null column a conversion made float32/64
        return np.isnan(np.asarray(err))
    return np.array([e is None or e == "" or (isinstance(e, float) and np.isnan(e)) for e in err],
                    dtype=bool)
