import numpy as np

from pipeline.io.schema import good_mask


def test_good_mask_reads_none_empty_and_nan_as_good():
    batch = {"id": np.array(["a", "b", "c", "d"]),
             "error": np.array([None, "", float("nan"), "x.fits: truncated"], dtype=object)}
    assert good_mask(batch).tolist() == [True, True, True, False]
    # a column Ray made all-NaN floats: every row is good
    assert good_mask({"id": np.array(["a", "b"]), "error": np.array([np.nan, np.nan])}).all()
    assert good_mask({"id": np.array(["a"])}).all()
