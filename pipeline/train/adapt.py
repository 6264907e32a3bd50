"""Adaptation to a survey's unlabeled cutouts: batch-norm statistics re-estimated on the target.

A network trained on simulations normalises its features with the simulations' batch-norm
statistics; on real cutouts those statistics are off, and every later layer sees shifted
features (Li et al. 2016, "AdaBN"). Re-estimating them on the survey's own unlabeled cutouts
needs no labels and changes no learned weight: each BatchNorm layer's running mean and variance
become the average over the target images (cumulative, not the training's moving average).

    lensray adapt runs/lens-vis --target 'survey/cutouts/*.fits' --out runs/lens-vis-adapted
    lensray train ... --adapt 'survey/cutouts/*.fits'      # the same after training

The adapted checkpoint records what it was adapted on (``config["adapted"]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHUNK = 64  # rows per forward pass while collecting statistics


def adapt_batchnorm(model, config: dict, images: np.ndarray, seed: int = 0):
    """Re-estimate every BatchNorm layer's running statistics of ``model`` on ``images``
    ((N, bands, H, W) in the survey's own units, normalised as the checkpoint says), in place.
    Returns the model in eval mode; the learned weights are untouched."""
    import torch

    from pipeline.models import normalize

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"model {config['model']!r} has no batch-norm layer to adapt")
    if len(images) < 2 * CHUNK:
        raise ValueError(f"adaptation needs at least {2 * CHUNK} target cutouts, got {len(images)}")
    z = normalize(np.asarray(images, np.float32), config["normalization"])[0]
    z = z[np.random.default_rng(seed).permutation(len(z))]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all target batches
    model.eval()
    for m in norms:
        m.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(z) - CHUNK + 1, CHUNK):  # full chunks: equal weight per batch
            model(torch.from_numpy(z[i:i + CHUNK]).to(device))
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    return model.eval()


def adapt_checkpoint(checkpoint, target, out_dir, limit: int | None = 20000, seed: int = 0) -> Path:
    """Adapt a checkpoint's batch-norm statistics to the cutouts ``target`` (files, globs,
    directories or URIs, read at the checkpoint's bands and size) and save it to ``out_dir``."""
    from pipeline.io import read_cutouts
    from pipeline.io.schema import IMAGE, good_mask
    from pipeline.models import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    ds = read_cutouts(target, bands=config["bands"], size=config["size"])
    if limit:
        ds = ds.limit(limit)
    parts = [np.asarray(b[IMAGE])[good_mask(b)]
             for b in ds.iter_batches(batch_size=1024, batch_format="numpy")]
    images = np.concatenate(parts) if parts else np.zeros((0,))
    adapt_batchnorm(model, config, images, seed)
    config = {**config, "adapted": {"method": "batch-norm statistics (AdaBN)",
                                    "target": [str(t) for t in np.atleast_1d(target)],
                                    "n": int(len(images)), "from": str(checkpoint)}}
    config.pop("metrics", None)  # the simulated TEST metrics were the unadapted model's
    return save_checkpoint(model, config, Path(out_dir))
