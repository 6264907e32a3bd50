"""Score a model on a split of simulated data with the field's metrics (and draw ROC curves).

Inference goes through ``pipeline.models.predict`` on the raw images, exactly as in the
cascade, so what is scored here is what users run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io.schema import CLEAN, IMAGE, good_mask
from pipeline.models.tasks import get_task


def collect(data_dir, split: str, config: dict, extra_columns=(), limit: int | None = None):
    """Images and label columns of one split as NumPy arrays (error rows dropped); the images
    are what the model takes in the cascade: raw, or its denoiser's output (``denoiser``). The
    task's optional labels are there when every row of the split has them."""
    from pipeline.io import read_cutouts
    from pipeline.train.data import split_paths, with_denoiser

    task = get_task(config["task"])
    cols = list(dict.fromkeys([IMAGE, *task.label_columns, *task.eval_labels, *extra_columns]))
    ds = read_cutouts(split_paths(data_dir, split), bands=config["bands"], size=config["size"],
                      clean=CLEAN in cols)
    if limit:
        ds = ds.limit(limit)
    ds = with_denoiser(ds, config)
    optional = [c for c in task.optional_labels if c not in cols]
    parts: dict[str, list] = {c: [] for c in cols + optional}
    for b in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        good = good_mask(b)
        for c in list(parts):
            if c in b:
                parts[c].append(np.asarray(b[c])[good])
            elif c in cols:
                raise ValueError(f"{data_dir}/{split}: column {c!r} missing (have {sorted(b)})")
            else:  # an optional label that some rows lack
                del parts[c]
    return {c: np.concatenate(v) for c, v in parts.items()}


def evaluate_model(model, config: dict, data_dir, split: str = "test", plots_dir=None,
                   limit: int | None = None, device=None) -> dict:
    """Metrics of ``model`` on ``data_dir/split`` (and ROC plots into ``plots_dir``)."""
    from pipeline.models import predict

    task = get_task(config["task"])
    data = collect(data_dir, split, config, limit=limit)
    pred = predict(model, config, data[IMAGE], device=device)
    labels = {c: data[c] for c in (*task.label_columns, *task.eval_labels, *task.optional_labels)
              if c in data}
    out = {k: (float(v) if isinstance(v, (float, np.floating)) else v)
           for k, v in task.metrics(pred, labels, config).items()}
    out["n"] = int(len(data[IMAGE]))
    out["split"] = split
    curves = task.roc_curves(pred, labels, config)
    if plots_dir is not None and curves:
        out["plots"] = roc_plots(curves, config, plots_dir)
    return out


def evaluate_checkpoint(path, data_dir, split: str = "test", write: bool = False,
                        plots_dir=None, limit: int | None = None) -> dict:
    """Load a checkpoint directory, score it; with ``write`` store the result as the config's
    ``metrics`` (held-out test metrics travel with the weights)."""
    from pipeline.models import load_checkpoint
    from pipeline.models.checkpoint import CONFIG_FILE

    model, config = load_checkpoint(path)
    res = evaluate_model(model, config, data_dir, split, plots_dir, limit)
    if write:
        config["metrics"] = {"split": split, "data": str(data_dir), **res}
        (Path(path) / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return res


def denoiser_effect_on_detector(denoiser, dn_config: dict, detector, det_config: dict,
                                data_dir, split: str = "test", limit: int | None = None) -> dict:
    """Detector AUC/TPR0 on the raw cutouts vs on the denoised cutouts of a lens data set."""
    from pipeline.metrics import lens_metrics
    from pipeline.models import predict
    from pipeline.models.tasks import LENS_DETECT, P_LENS

    data = collect(data_dir, split, det_config, limit=limit)
    truth = data[LENS_DETECT.class_column]
    raw = predict(detector, det_config, data[IMAGE])[P_LENS]
    clean = predict(denoiser, dn_config, data[IMAGE])[IMAGE]
    den = predict(detector, det_config, clean)[P_LENS]
    a, b = lens_metrics(truth, raw), lens_metrics(truth, den)
    return {"auc_raw": a["auc"], "auc_denoised": b["auc"], "tpr0_raw": a["tpr0"],
            "tpr0_denoised": b["tpr0"], "n": int(len(raw))}


def roc_plots(curves: dict, config: dict, out_dir) -> list[str]:
    """The task's ROC ``curves`` ({name: (truth, score)}) of a checkpoint's ``config`` as one
    PNG file (``pipeline.plots.write_roc``); returns its path in a list."""
    from pipeline.plots import write_roc

    path = Path(out_dir) / f"roc_{config['task']}_{config['model']}.png"
    return [str(write_roc(curves, path, f"{config['task']}: {config['model']}"))]


def load_sky_cutout(path, hdu: int | None = None, plane: int | None = None,
                    pixel_scale: float | None = None,
                    bands=None) -> tuple[np.ndarray, float]:
    """One observed cutout as a (H, W) float32 array and its pixel scale (arcsec/px, the row's
    own unless given), read by the package's reader (``pipeline.io.read_fits_file``).

    ``hdu``: the row of that HDU (None: the file's first row); ``bands``: band names to read
    (e.g. ``["VIS"]`` from a Euclid file of many ``*_FLUX`` extensions); ``plane``: the band to
    keep of a multi-band row."""
    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.io.schema import ERROR, INDEX, PIXEL_SCALE

    rows = read_fits_file(str(path), ReadOptions(bands=bands, geometry=True))
    hits = np.flatnonzero(rows[INDEX] == hdu) if hdu is not None else [0]
    if not len(hits):
        raise ValueError(f"{path}: no cutout in HDU {hdu} (cutouts in HDUs {rows[INDEX].tolist()})")
    i = hits[0]
    if rows[ERROR][i]:
        raise ValueError(rows[ERROR][i])
    image = rows[IMAGE][i]
    if image.shape[0] > 1 and plane is None:
        raise ValueError(f"{path}[{hdu}]: {image.shape[0]} bands of shape {image.shape[1:]}; "
                         "pass plane=")
    image = image[plane or 0]
    scale = pixel_scale or float(rows[PIXEL_SCALE][i])
    if not np.isfinite(scale):
        raise ValueError(f"{path}[{hdu}]: no celestial WCS or PIXSCALE; pass pixel_scale=")
    return image, float(scale)


def score_sky_cutouts(model, config: dict, entries: list[dict]) -> list[dict]:
    """Score observed cutouts with a lens finder after resampling each to the model's pixel
    scale and cropping/padding to its size (``fit_cutouts``). ``entries``: dicts with ``path``
    and optional ``hdu``, ``plane``, ``pixel_scale``, ``bands`` (see :func:`load_sky_cutout`)
    and ``label``. Single-band models only."""
    from pipeline.models import fit_cutouts, predict

    if len(config["bands"]) != 1:
        raise ValueError("score_sky_cutouts handles single-band models only")
    rows = []
    for e in entries:
        img, scale = load_sky_cutout(e["path"], e.get("hdu"), e.get("plane"),
                                     e.get("pixel_scale"), e.get("bands"))
        x = fit_cutouts(img[None, None], scale, config)
        p = predict(model, config, x)
        rows.append({**{k: v for k, v in e.items() if k != "path"}, "file": Path(e["path"]).name,
                     "native_shape": list(img.shape), "pixel_scale": scale,
                     **{k: float(v[0]) for k, v in p.items()}})
    return rows
