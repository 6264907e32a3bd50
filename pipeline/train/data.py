"""Training data: simulated FITS shards -> Ray Datasets of normalised inputs + labels.

A data directory is what ``lensray simulate`` writes: ``DIR/{train,val,test}/shard-*.fits`` and
``DIR/manifest.json``. Normalisation is the one in ``pipeline.models.normalize``, so training sees
exactly what inference will.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io.files import is_fits_name
from pipeline.io.schema import CLEAN, IMAGE, good_mask
from pipeline.models.normalize import normalize
from pipeline.models.tasks import get_task

SPLITS = ("train", "val", "test")


def split_paths(data_dir, split: str) -> list[str]:
    """Sorted shard files of one split; a clear error if the split is missing or empty."""
    d = Path(data_dir) / split
    files = sorted(str(p) for p in d.glob("*") if p.is_file() and is_fits_name(p.name))
    if not files:
        raise FileNotFoundError(f"{d}: no FITS shards for split {split!r} (expected "
                                f"{d}/shard-*.fits as written by `lensray simulate`)")
    return files


def read_manifest(data_dir) -> dict:
    """``DIR/manifest.json`` as a dict ({} when absent)."""
    f = Path(data_dir) / "manifest.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from e


class PrepareBatch:
    """Ray Data batch function: drop error rows (and, with ``keep_classes``, rows of other
    classes), normalise images to ``x``, keep the task's label columns (image labels, such as
    the denoiser's clean target, normalised with their input's statistics)."""

    def __init__(self, task: str, normalization: dict, keep_classes=None):
        self.task = get_task(task)
        self.normalization = normalization
        self.keep = (None if not keep_classes else
                     [self.task.classes.index(c) for c in keep_classes])

    def __call__(self, batch: dict) -> dict:
        good = good_mask(batch)
        if self.keep is not None:
            good &= np.isin(np.asarray(batch[self.task.class_column]), self.keep)
        img = np.asarray(batch[IMAGE])[good]
        x, sky, noise = normalize(img, self.normalization)
        out = {"x": x}
        for col in self.task.label_columns:
            if col not in batch:
                raise ValueError(f"training data lack label column {col!r} needed by task "
                                 f"{self.task.name!r} (columns: {sorted(batch)})")
            v = np.asarray(batch[col])[good]
            if col in self.task.image_labels:
                v = normalize(v, self.normalization, stats=(sky, noise))[0]
            elif v.dtype.kind in "biu":
                v = v.astype(np.int64)
            else:
                v = v.astype(np.float32)
            out[col] = v
        return out


class DenoiseImages:
    """Ray Data batch function (an actor holds the network): the image column of good rows
    replaced by a denoiser's output, as the cascade's denoise stage hands it to the stages after
    it. For models trained and scored on what they are given in the cascade (``denoiser``)."""

    def __init__(self, checkpoint: str):
        from pipeline.models import load_checkpoint

        self.model, self.config = load_checkpoint(checkpoint)

    def __call__(self, batch: dict) -> dict:
        from pipeline.models import predict

        good = good_mask(batch)
        if good.any():
            img = np.array(batch[IMAGE], dtype=np.float32)
            img[good] = predict(self.model, self.config, img[good])[IMAGE]
            batch[IMAGE] = img
        return batch


def with_denoiser(ds, config: dict):
    """``ds`` with its images denoised when ``config`` trains on a denoiser's output."""
    if not config.get("denoiser"):
        return ds
    import ray

    from pipeline.models.checkpoint import resolve_checkpoint

    return ds.map_batches(DenoiseImages, batch_format="numpy", batch_size=512,
                          fn_constructor_kwargs={"checkpoint": str(resolve_checkpoint(
                              config["denoiser"], "denoise"))},
                          compute=ray.data.ActorPoolStrategy(size=1))


def load_split(data_dir, split: str, task: str, config: dict):
    """A Ray Dataset of one split, prepared for ``task`` (columns ``x`` + labels); images
    denoised first when the config trains on a denoiser's output."""
    from pipeline.io import read_cutouts

    ds = with_denoiser(read_cutouts(split_paths(data_dir, split), bands=config["bands"],
                                    size=config["size"],
                                    clean=CLEAN in get_task(task).label_columns), config)
    prep = PrepareBatch(task, config["normalization"], config.get("train_classes"))
    return ds.map_batches(prep, batch_format="numpy", batch_size=256)


def target_stats(ds, task: str) -> dict:
    """Standardisation (mean, std over the rows where each target is meaningful) of the
    regression targets of ``task``, measured on a (training) dataset."""
    t = get_task(task)
    if not t.targets:
        return {}
    cols = _columns(ds, [t.class_column, *t.targets])
    cls = cols[t.class_column]
    out = {}
    for name, k in t.targets.items():
        y = cols[name][(cls == k) & np.isfinite(cols[name])]
        if len(y) < 2:
            raise ValueError(f"training data have fewer than 2 meaningful values of {name!r}")
        out[name] = {"class": int(k), "mean": float(y.mean()), "std": float(max(y.std(), 1e-6))}
    return out


def _columns(ds, names: list[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {n: [] for n in names}
    for b in ds.select_columns(names).iter_batches(batch_size=4096, batch_format="numpy"):
        for n in names:
            parts[n].append(np.asarray(b[n]))
    return {n: np.concatenate(v) for n, v in parts.items()}
