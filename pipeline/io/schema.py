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

CLEAN = "clean"  # float32 tensor like IMAGE: the noiseless image of a simulated cube shard
# Label columns of labelled (simulated) data: written by pipeline.simulate, learnt by the tasks of
# pipeline.models.tasks; a class column holds the index of its class name.
IS_LENS = "is_lens"  # 0/1
SUBSTRUCTURE_CLASS = "substructure"  # index into SUBSTRUCTURE_CLASSES
SUBSTRUCTURE_CLASSES = ("no_sub", "cdm", "vortex")

PIXEL_SCALE = "pixel_scale"  # float64 arcsec/px of the image as read (native), NaN when unknown (geometry=True)
BAND_NAMES = "band_names"  # str, the image's bands ("VIS", "g,r,i"), None when unnamed (geometry=True)
# Written by every model stage for the rows it computes (pipeline.models.fit, pipeline.stages):
RESAMPLE = "resample_factor"  # float64: native pixel scale / the model's, i.e. model pixels per native pixel; NaN: taken as it was
IMAGE_SCALE = "image_scale"  # float64 arcsec/px of IMAGE once a stage replaced it by its model's output (the denoiser)
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
def restore_nulls(batch: dict) -> dict:
    """``batch`` with its ``error`` column's nulls back (None) if it arrived as float NaN."""
    err = batch.get(ERROR)
    if err is not None and np.asarray(err).dtype.kind == "f":
        return {**batch, ERROR: np.full(len(batch[ID]), None, dtype=object)}
    return batch


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
    return np.array([e is None or e == "" or (isinstance(e, float) and np.isnan(e)) for e in err],
                    dtype=bool)
