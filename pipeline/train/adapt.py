"""Adaptation to the survey a model will run on: domain-adversarial training (DANN).

Ganin et al. 2016 (JMLR 17, 59, "Domain-adversarial training of neural networks"): a small
domain head learns to tell the network's features of simulated (labelled, source) cutouts from
those of the survey's own unlabeled (target) cutouts, and a gradient-reversal layer between the
features and that head turns its gradient around for the network, which so learns features the
head cannot tell apart while the lens loss keeps them useful. The features are what enters the
network's last linear layer (:class:`FeatureTap`), so every classifier of the registry adapts
without knowing about it. The reversal's strength ramps up as Ganin et al.'s
``2 / (1 + exp(-10 p)) - 1`` over training progress ``p``, times ``adapt_weight``.

``adapt_align="negatives"`` (lens finders only) aligns the survey with the simulated
**non-lenses** alone, a class-conditional adversary: a survey holds ~1 lens in 1,000 galaxies
while a training set holds ~40%, so aligning it with the whole set (plain DANN, "all") must map
some real galaxies onto lens-like features (label shift; measured in benchmarks/accuracy.md).

    lensray train --stage lens-detect --init CKPT --data SIMS --out OUT --adapt 'survey/*.fits'

The target cutouts go through the project's reader and are fitted to the model's geometry
(``pipeline.models.fit_rows``, as ``lensray run`` does), denoised when the model is trained on
a denoiser's output (``--denoiser``, as its training cutouts are) and normalised as at
inference; rows that cannot be are counted and named, never fed. The domain head is training-only: the exported
checkpoint is the plain network, and its config records the method and the target files by name
(``config["adapt"]``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

log = logging.getLogger(__name__)

METHOD = "dann"
ALIGN = ("all", "negatives")  # which source rows the target is aligned with
MAX_FILES = 50  # target file names kept in a config (the count is always kept)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; the gradient times ``-coeff`` backward (the gradient-reversal layer)."""
    return _Reverse.apply(x, float(coeff))


def ganin_lambda(progress: float) -> float:
    """Ganin et al.'s ramp of the reversal: 0 at the start of training, near 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class DomainHead(nn.Module):
    """Source (0) vs target (1) logit from a network's features."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)[:, 0]


class FeatureTap:
    """Keeps what enters a network's last linear layer on each forward pass (its features)."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no linear output layer: domain-"
                             "adversarial adaptation needs one (its input is the features)")
        self.in_features = linears[-1].in_features
        self.features = None
        linears[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.features = inputs[0].flatten(1)


class Adversary:
    """The domain-adversarial part of one training run: the head, its loss and running tallies.

    ``loss(n_source, step, batch)`` after a forward pass of a batch whose first ``n_source``
    rows are source cutouts (``batch`` their labels) and the rest target cutouts;
    ``epoch_metrics()`` gives the epoch's mean domain loss, the head's accuracy and the
    reversal's last coefficient, then resets. ``align``: see the module's docstring.
    """

    def __init__(self, model: nn.Module, weight: float, steps_per_epoch: int, epochs: int,
                 align: str = "all"):
        if align not in ALIGN:
            raise ValueError(f"adapt_align must be one of {ALIGN}, got {align!r}")
        self.tap = FeatureTap(model)
        self.head = DomainHead(self.tap.in_features)
        self.align = align
        self.weight, self.steps_per_epoch = float(weight), steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * epochs)
        self._reset()

    def _reset(self):
        self.sum_loss, self.correct, self.n, self.coeff = 0.0, 0, 0, 0.0

    def loss(self, n_source: int, step: int, batch: dict) -> torch.Tensor:
        import torch.nn.functional as F

        from pipeline.io.schema import IS_LENS

        feats = self.tap.features.float()
        if self.align == "negatives":  # the source side: the simulated non-lenses only
            keep = batch[IS_LENS][:n_source] == 0
            feats = torch.cat([feats[:n_source][keep], feats[n_source:]])
            n_source = int(keep.sum())
        self.coeff = self.weight * ganin_lambda(step / self.total_steps)
        logit = self.head(grad_reverse(feats, self.coeff))
        domain = torch.zeros(len(feats), device=feats.device)
        domain[n_source:] = 1.0
        loss = F.binary_cross_entropy_with_logits(logit, domain)
        self.sum_loss += loss.item() * len(feats)
        self.correct += int(((logit > 0).float() == domain).sum())
        self.n += len(feats)
        return loss

    def epoch_metrics(self) -> dict:
        out = {"domain_loss": self.sum_loss / max(self.n, 1),
               "domain_acc": self.correct / max(self.n, 1), "adapt_coeff": self.coeff}
        self._reset()
        return out


def target_batches(shard, batch_size: int, seed: int):
    """Endless batches of target ``x`` from a dataset shard, reshuffled on every pass."""
    epoch = 0
    while True:
        got = False
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                              local_shuffle_buffer_size=2048,
                                              local_shuffle_seed=seed + epoch):
            got = True
            yield batch["x"]
        if not got:
            raise ValueError(f"fewer target cutouts than one batch ({batch_size})")
        epoch += 1


# ----------------------------------------------------------------------------- driver side
class FitTarget:
    """Ray Data batch function: reader rows -> ``image`` fitted to the model's geometry and
    ``error`` ("" for good rows; a row that cannot be fitted gets the reason and a zero image)."""

    def __init__(self, config: dict):
        self.config = config

    def __call__(self, rows: dict) -> dict:
        from pipeline.io.schema import ERROR, IMAGE, good_mask
        from pipeline.models.fit import fit_rows

        good = good_mask(rows)
        errors = np.array(["" if g else str(e) for g, e in zip(good, rows[ERROR], strict=True)],
                          dtype=object)
        size, nb = int(self.config["size"]), len(self.config["bands"])
        image = np.zeros((len(good), nb, size, size), np.float32)
        if good.any():  # the reader's error rows carry no image to fit
            fit = fit_rows({k: np.asarray(v)[good] for k, v in rows.items()}, self.config)
            idx = np.flatnonzero(good)
            errors[idx[~fit.ok]] = [str(e) for e in fit.errors[~fit.ok]]
            image[idx[fit.ok]] = fit.images[fit.ok]
        return {IMAGE: image, ERROR: errors.astype(str)}


def normalize_target(config: dict):
    """Ray Data batch function: ``image`` -> ``x`` normalised as at inference."""
    from pipeline.io.schema import ERROR, IMAGE
    from pipeline.models.normalize import normalize

    def run(batch: dict) -> dict:  # (error rows hold zero images: they normalise to zeros)
        return {"x": normalize(batch[IMAGE], config["normalization"])[0], ERROR: batch[ERROR]}

    return run


def load_target(inputs, config: dict, pixel_scale: float | None = None):
    """Read the unlabeled target cutouts ``inputs`` (files, globs, directories, URIs) for a
    training ``config``. Returns ``(dataset of x, record)``; the record (kept in the config)
    names the method, the files (names only), and how many cutouts were used and refused."""
    from pipeline.io import list_inputs, read_cutouts
    from pipeline.train.data import with_denoiser

    listed = list_inputs(inputs)
    ds = read_cutouts(listed, geometry=True, pixel_scale=pixel_scale)
    fitted = ds.map_batches(FitTarget(config), batch_format="numpy", batch_size=256)
    # a model trained on a denoiser's output meets the survey through that denoiser too
    prepared = with_denoiser(fitted, config).map_batches(
        normalize_target(config), batch_format="numpy", batch_size=256).materialize()
    bad = prepared.filter(lambda r: r["error"] != "").select_columns(["error"]).materialize()
    good = prepared.filter(lambda r: r["error"] == "").select_columns(["x"]).materialize()
    n_good, n_bad = good.count(), bad.count()
    examples = [r["error"] for r in bad.take(3)]
    if n_good == 0:
        raise ValueError("--adapt: none of the target cutouts fits the model"
                         + (f" ({n_bad} refused; e.g. {examples[0]})" if examples else ""))
    for e in examples:  # said here, not kept: the messages name machine paths
        log.warning("--adapt: target cutout refused: %s", e)
    if n_bad > len(examples):
        log.warning("--adapt: %d target cutouts refused in all", n_bad)
    names = [Path(f).name for f in listed.files]
    record = {"method": METHOD, "files": names[:MAX_FILES], "n_files": len(names),
              "n": int(n_good), "n_refused": int(n_bad)}
    if pixel_scale is not None:
        record["pixel_scale"] = float(pixel_scale)
    return good, record
