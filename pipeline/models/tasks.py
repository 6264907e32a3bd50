"""What each stage's network outputs mean, in ONE place per task.

A task says how many outputs a network needs, which label columns it learns from, its loss,
how raw outputs become catalogue columns (``decode``) and how those columns are scored
(``metrics``). Training, evaluation and inference all go through these objects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.normalize import denormalize
from pipeline import metrics as M

LOG_SIGMA_RANGE = (-7.0, 3.0)  # clamp of predicted log-sigma (standardised units) for stability


class LensDetect:
    """Binary lens / non-lens classification: one logit, binary cross-entropy."""

    name = "lens-detect"
    label_columns = ("is_lens",)
    monitor, mode = "val_loss", "min"

    def num_outputs(self, config: dict) -> int:
        return 1

    def loss(self, out: torch.Tensor, batch: dict, config: dict) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out[:, 0], batch["is_lens"].float())

    def decode(self, out: np.ndarray, config: dict, stats=None) -> dict[str, np.ndarray]:
        return {"p_lens": (1 / (1 + np.exp(-out[:, 0].astype(np.float64)))).astype(np.float32)}

    def metrics(self, pred: dict, labels: dict, config: dict) -> dict[str, float]:
        return M.lens_metrics(labels["is_lens"], pred["p_lens"])


class Substructure:
    """Three-class substructure (no_sub / cdm / vortex) plus heteroscedastic regression of
    dark-matter parameters. Outputs: class logits, then (mean, log-sigma) per target in
    standardised units. Each target's loss is the Gaussian NLL on the rows of the class where it
    is meaningful (log10_m_axion on vortex rows, sigma_sub on cdm rows), weighted by
    ``regression_weight``: at full weight the regression terms steer the shared features before
    the classes are found and training stalls at chance (measured: macro AUC 0.50 vs 0.55 after
    two epochs); the heads themselves learn at the same pace under Adam whatever the weight.

    ``nll_beta`` (beta-NLL, Seitzer et al. 2022): each row's NLL is scaled by its predicted
    variance to the power beta (no gradient through the scale). Plain NLL (beta 0) lets the
    network widen sigma on hard rows instead of fitting their mean; beta 0.5 keeps fitting them."""

    name = "substructure"
    classes = ("no_sub", "cdm", "vortex")
    # target -> index of the class whose rows carry it
    targets = {"log10_m_axion": 2, "sigma_sub": 1}
    label_columns = ("substructure", *targets)
    monitor, mode = "val_loss", "min"
    regression_weight = 0.1
    nll_beta = 0.0

    def num_outputs(self, config: dict) -> int:
        return len(config.get("classes", self.classes)) + 2 * len(config["targets"])

    def _split(self, out, config):
        k = len(config.get("classes", self.classes))
        names = list(config["targets"])
        mean = out[:, k : k + len(names)]
        log_sigma = out[:, k + len(names) :]
        return out[:, :k], names, mean, log_sigma

    def loss(self, out: torch.Tensor, batch: dict, config: dict) -> torch.Tensor:
        logits, names, mean, log_sigma = self._split(out, config)
        cls = batch["substructure"].long()
        total = F.cross_entropy(logits, cls)
        # a run's config may carry None for "the task's default"
        weight, beta = (getattr(self, k) if config.get(k) is None else config[k]
                        for k in ("regression_weight", "nll_beta"))
        for j, name in enumerate(names):
            t = config["targets"][name]
            y = (batch[name].float() - t["mean"]) / t["std"]
            mask = (cls == t["class"]) & torch.isfinite(y)
            if mask.any():
                ls = log_sigma[mask, j].clamp(*LOG_SIGMA_RANGE)
                z = (y[mask] - mean[mask, j]) * torch.exp(-ls)
                scale = torch.exp(2 * beta * ls).detach() if beta else 1.0
                total = total + weight * (scale * (0.5 * z**2 + ls)).mean()
        return total

    def decode(self, out: np.ndarray, config: dict, stats=None) -> dict[str, np.ndarray]:
        out = np.asarray(out, dtype=np.float64)
        logits, names, mean, log_sigma = self._split(out, config)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        cols = {f"p_{c}": p[:, i].astype(np.float32)
                for i, c in enumerate(config.get("classes", self.classes))}
        for j, name in enumerate(names):
            t = config["targets"][name]
            cols[name] = (mean[:, j] * t["std"] + t["mean"]).astype(np.float32)
            ls = np.clip(log_sigma[:, j], *LOG_SIGMA_RANGE)
            cols[f"{name}_sigma"] = (np.exp(ls) * t["std"]).astype(np.float32)
        return cols

    def metrics(self, pred: dict, labels: dict, config: dict) -> dict[str, float]:
        classes = list(config.get("classes", self.classes))
        probs = np.stack([pred[f"p_{c}"] for c in classes], axis=1)
        cls = np.asarray(labels["substructure"]).astype(int)
        out = M.multiclass_auc(cls, probs, classes)
        for name, t in config["targets"].items():
            y = np.asarray(labels[name], dtype=np.float64)
            rows = (cls == t["class"]) & np.isfinite(y)
            reg = M.regression_metrics(y[rows], pred[name][rows], pred[f"{name}_sigma"][rows])
            out.update({f"{name}_{k}": v for k, v in reg.items()})
        return out


class Denoise:
    """Image-to-image denoising: predicts the clean image in the noisy input's normalised
    units; mean squared error there."""

    name = "denoise"
    label_columns = ("clean",)
    monitor, mode = "val_loss", "min"

    def num_outputs(self, config: dict) -> int:
        return len(config["bands"])

    def loss(self, out: torch.Tensor, batch: dict, config: dict) -> torch.Tensor:
        return F.mse_loss(out, batch["clean"])

    def decode(self, out: np.ndarray, config: dict, stats=None) -> dict[str, np.ndarray]:
        # Without stats (training-time validation) the image stays in normalised units.
        img = out if stats is None else denormalize(out, *stats, config["normalization"])
        return {"image": np.asarray(img, dtype=np.float32)}

    def metrics(self, pred: dict, labels: dict, config: dict) -> dict[str, float]:
        return M.denoise_metrics(labels["clean"], pred["image"], labels.get("image"))


TASKS = {t.name: t for t in (LensDetect(), Substructure(), Denoise())}


def get_task(name: str):
    """The task object for ``name`` ('denoise', 'lens-detect' or 'substructure')."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def model_kwargs(task: str, model: str, config: dict, **overrides) -> dict:
    """Constructor arguments a task implies for a registered model (bands in, outputs out)."""
    t = get_task(task)
    if task == "denoise":
        kw = {"in_channels": len(config["bands"])}
    else:
        kw = {"in_channels": len(config["bands"]), "num_outputs": t.num_outputs(config)}
    if model == "two_tower":  # the regressor provides the targets of the classes it trains on
        classes = list(config.get("classes", t.classes))
        kw["num_classes"] = len(classes)
        keep = [classes.index(c) for c in config.get("train_classes") or classes]
        kw["regressor_targets"] = [j for j, v in enumerate(config["targets"].values())
                                   if v["class"] in keep]
    return {**kw, **overrides}
