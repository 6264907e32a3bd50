"""The classical shortcut baseline: gradient boosting on a few image moments.

A lens finder should see arcs. If a classifier that only knows a cutout's total flux, peak,
size, concentration, ellipticity, centroid offset and border level can separate the lenses of a
training set from its non-lenses, the set carries label information in its galaxies and
surroundings, which a network will learn instead of arcs (and which the sky does not carry).
On a matched set (``lensray simulate --task lens --matched``) it should be at chance.

``shortcut_auc(data_dir)`` fits scikit-learn's ``HistGradientBoostingClassifier`` on the train
split's moments and returns its AUC on the held-out test split. It is also the classical
baseline row of the accuracy tables.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.normalize import image_stats

FEATURES = ("total_flux", "peak", "size", "concentration", "ellipticity", "centroid_offset",
            "border_level")


def moments(images: np.ndarray) -> np.ndarray:
    """(N, len(FEATURES)) moment features of (N, B, H, W) images (bands summed, sky-subtracted,
    in units of the border noise, so they are unit-free like the networks' input)."""
    x = np.asarray(images, dtype=np.float64)
    sky, noise = image_stats(x)
    z = ((x - sky[..., None, None]) / noise[..., None, None]).sum(1)  # (N, H, W)
    n, h, w = z.shape
    yy, xx = np.indices((h, w), dtype=np.float64)
    pos = np.clip(z, 0, None)
    tot = pos.sum((1, 2)) + 1e-9
    cx = (pos * xx).sum((1, 2)) / tot
    cy = (pos * yy).sum((1, 2)) / tot
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    qxx = (pos * dx**2).sum((1, 2)) / tot
    qyy = (pos * dy**2).sum((1, 2)) / tot
    qxy = (pos * dx * dy).sum((1, 2)) / tot
    r_c = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2)
    inner = (pos * (r_c < h / 16)).sum((1, 2))
    outer = (pos * (r_c < h / 4)).sum((1, 2)) + 1e-9
    border = np.concatenate([z[:, :4].reshape(n, -1), z[:, -4:].reshape(n, -1),
                             z[:, :, :4].reshape(n, -1), z[:, :, -4:].reshape(n, -1)], 1)
    feats = [np.arcsinh(z.sum((1, 2))), np.arcsinh(z.max((1, 2))), np.sqrt(qxx + qyy),
             inner / outer, np.hypot(qxx - qyy, 2 * qxy) / (qxx + qyy + 1e-9),
             np.hypot(cx - (w - 1) / 2, cy - (h - 1) / 2), border.mean(1)]
    return np.stack(feats, 1)


def split_moments(data_dir, split: str, limit: int | None = None,
                  columns=()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Moments, ``is_lens`` and the requested label ``columns`` of one split of a simulated set
    (error rows dropped; at most ``limit`` rows)."""
    from pipeline.io import read_fits_file
    from pipeline.train.data import split_paths

    parts: dict[str, list] = {"x": [], "is_lens": [], **{c: [] for c in columns}}
    for path in split_paths(data_dir, split):
        rows = read_fits_file(path)
        good = np.asarray([not e for e in rows["error"]]) if "error" in rows else slice(None)
        parts["x"].append(moments(np.asarray(rows["image"])[good]))
        for c in ("is_lens", *columns):
            parts[c].append(np.asarray(rows[c])[good])
        if limit and sum(map(len, parts["x"])) >= limit:
            break
    out = {k: np.concatenate(v)[:limit] for k, v in parts.items()}
    return out.pop("x"), out.pop("is_lens").astype(int), out


def fit_auc(x_train, y_train, x_test, y_test, seed: int = 0) -> float:
    """Held-out AUC of gradient boosting fitted on (x_train, y_train)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pipeline.metrics import roc_auc

    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    clf.fit(x_train, y_train)
    return roc_auc(y_test, clf.predict_proba(x_test)[:, 1])


def shortcut_auc(data_dir, limit: int | None = 8000, seed: int = 0) -> dict:
    """Held-out AUC of gradient boosting on image moments (train split -> test split)."""
    x_tr, y_tr, _ = split_moments(data_dir, "train", limit)
    x_te, y_te, _ = split_moments(data_dir, "test", limit)
    return {"auc": fit_auc(x_tr, y_tr, x_te, y_te, seed), "n_train": int(len(y_tr)),
            "n_test": int(len(y_te)), "features": list(FEATURES)}
