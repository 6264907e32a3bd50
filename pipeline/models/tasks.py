"""What each stage's network does, in ONE place per task; ``STAGES`` is the one list of stage names.

A task says which columns it reads and which catalogue columns it writes, which label columns it
learns from (and which of those are images that are normalised and augmented together with the
input), its classes and regression targets, how many outputs a network needs and the
constructor arguments that implies, its loss, how raw outputs become catalogue columns
(``decode``), how those are scored (``metrics``, ``roc_curves``) and what an empty output looks
like. The cascade's stages, the CLI, checkpoints, training, evaluation and inference all read
these objects instead of testing a task's name.

No torch at import (a loss imports it when called): the CLI and the stage specs built on a
driver read this vocabulary without loading a network.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipeline import metrics as M
from pipeline.io.schema import (
    CLEAN,
    IMAGE,
    IS_LENS,
    SNR_ARCS,
    SUBSTRUCTURE_CLASS,
    SUBSTRUCTURE_CLASSES,
)
from pipeline.models.normalize import denormalize

LOG_SIGMA_RANGE = (-7.0, 3.0)  # clamp of predicted log-sigma (standardised units) for stability
P_LENS = "p_lens"  # the lens finder's score column
P_LENS_STD = "p_lens_std"  # an ensemble's spread: std of its members' p_lens (ddof 0)


class Task:
    """The decisions every task makes (subclasses set the class attributes and methods)."""

    name: ClassVar[str] = ""  # the task's and its cascade stage's name
    reads: ClassVar[tuple[str, ...]] = (IMAGE,)  # row columns the network takes
    label_columns: ClassVar[tuple[str, ...]] = ()  # what training learns from
    image_labels: ClassVar[tuple[str, ...]] = ()  # labels that are images: normalised with the
    #                                                input's statistics, augmented with it
    eval_labels: ClassVar[tuple[str, ...]] = ()  # more columns the metrics compare against;
    #                                               IMAGE means the network's own input
    optional_labels: ClassVar[tuple[str, ...]] = ()  # used by the test metrics where the data
    #                                                   has them (simulations do, mined sets not)
    classes: ClassVar[tuple[str, ...] | None] = None  # class names, index = label value
    class_column: ClassVar[str | None] = None  # the label column holding that index
    targets: ClassVar[dict[str, int]] = {}  # regression target -> class whose rows carry it
    monitor, mode = "val_loss", "min"  # what picks the best epoch

    def columns(self, config: dict | None = None) -> tuple[str, ...]:
        """Catalogue columns ``decode`` returns for a checkpoint's ``config`` (None: the task's
        defaults, which the stages declare as what they write)."""
        raise NotImplementedError

    def num_outputs(self, config: dict) -> int:
        raise NotImplementedError

    def model_kwargs(self, config: dict) -> dict:
        """Constructor arguments the task implies for a network (bands in, outputs out)."""
        return {"in_channels": len(config["bands"]), "num_outputs": self.num_outputs(config)}

    def output_shape(self, config: dict, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one row's raw network output for an input row of ``input_shape``."""
        return (self.num_outputs(config),)

    def loss(self, out, batch: dict, config: dict):
        raise NotImplementedError

    def combine(self, members: list[dict[str, np.ndarray]], config: dict) -> dict[str, np.ndarray]:
        """An ensemble's columns from its members' decoded columns (same columns each, same
        rows): the mean of each column."""
        return {k: np.mean([m[k] for m in members], axis=0, dtype=np.float64).astype(
            np.asarray(members[0][k]).dtype) for k in members[0]}

    def decode(self, out: np.ndarray, config: dict, stats=None) -> dict[str, np.ndarray]:
        """Raw outputs -> catalogue columns (``stats``: the input's (sky, noise) when known)."""
        raise NotImplementedError

    def metrics(self, pred: dict, labels: dict, config: dict) -> dict[str, float]:
        raise NotImplementedError

    def roc_curves(self, pred: dict, labels: dict, config: dict) -> dict[str, tuple]:
        """Curve name -> (binary truth, score) for ROC plots; empty if the task has none."""
        return {}

    def class_names(self, config: dict) -> list[str]:
        return list(config.get("classes") or self.classes or ())


class LensDetect(Task):
    """Binary lens / non-lens classification: one logit, binary cross-entropy."""

    name = "lens-detect"
    label_columns = (IS_LENS,)
    optional_labels = (SNR_ARCS,)
    classes = ("non-lens", "lens")
    class_column = IS_LENS

    def columns(self, config=None):
        return (P_LENS,)

    def num_outputs(self, config):
        return 1

    def loss(self, out, batch, config):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out[:, 0], batch[IS_LENS].float())

    def decode(self, out, config, stats=None):
        return {P_LENS: (1 / (1 + np.exp(-out[:, 0].astype(np.float64)))).astype(np.float32)}

    def combine(self, members, config):
        """The mean ``p_lens`` and its spread ``p_lens_std`` (std across members, ddof 0)."""
        cols = super().combine(members, config)
        cols[P_LENS_STD] = np.std([m[P_LENS] for m in members], axis=0,
                                  dtype=np.float64).astype(np.float32)
        return cols

    def metrics(self, pred, labels, config):
        out = M.lens_metrics(labels[IS_LENS], pred[P_LENS])
        if SNR_ARCS in labels:
            out.update(M.detectable_lens_metrics(labels[IS_LENS], pred[P_LENS], labels[SNR_ARCS]))
        return out

    def roc_curves(self, pred, labels, config):
        return {"lens": (labels[IS_LENS], pred[P_LENS])}


class Substructure(Task):
    """Three-class substructure (no_sub / cdm / vortex) plus heteroscedastic regression of
    dark-matter parameters. Outputs: class logits, then (mean, log-sigma) per target in
    standardised units. Each target's loss is the Gaussian NLL on the rows of the class where it
    is meaningful (log10_m_axion on vortex rows, sigma_sub on cdm rows), weighted by
    ``regression_weight``: at full weight the regression terms steer the shared features before
    the classes are found and training stalls at chance (docs/models.md, "How the substructure
    model learned"); the heads themselves learn at the same pace under Adam whatever the weight.

    ``nll_beta`` (beta-NLL, Seitzer et al. 2022): each row's NLL is scaled by its predicted
    variance to the power beta (no gradient through the scale). Plain NLL (beta 0) lets the
    network widen sigma on hard rows instead of fitting their mean; beta 0.5 keeps fitting them."""

    name = "substructure"
    classes = SUBSTRUCTURE_CLASSES
    class_column = SUBSTRUCTURE_CLASS
    targets = {"log10_m_axion": 2, "sigma_sub": 1}
    label_columns = (class_column, *targets)
    regression_weight = 0.1
    nll_beta = 0.0

    def columns(self, config=None):
        names = list(config["targets"]) if config else list(self.targets)
        classes = self.class_names(config or {})
        return (*(f"p_{c}" for c in classes), *(c for n in names for c in (n, f"{n}_sigma")))

    def num_outputs(self, config):
        return len(self.class_names(config)) + 2 * len(config["targets"])

    def _split(self, out, config):
        k = len(self.class_names(config))
        names = list(config["targets"])
        mean = out[:, k : k + len(names)]
        log_sigma = out[:, k + len(names) :]
        return out[:, :k], names, mean, log_sigma

    def loss(self, out, batch, config):
        import torch
        import torch.nn.functional as F

        logits, names, mean, log_sigma = self._split(out, config)
        cls = batch[self.class_column].long()
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

    def decode(self, out, config, stats=None):
        out = np.asarray(out, dtype=np.float64)
        logits, names, mean, log_sigma = self._split(out, config)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        cols = {f"p_{c}": p[:, i].astype(np.float32) for i, c in enumerate(self.class_names(config))}
        for j, name in enumerate(names):
            t = config["targets"][name]
            cols[name] = (mean[:, j] * t["std"] + t["mean"]).astype(np.float32)
            ls = np.clip(log_sigma[:, j], *LOG_SIGMA_RANGE)
            cols[f"{name}_sigma"] = (np.exp(ls) * t["std"]).astype(np.float32)
        return cols

    def combine(self, members, config):
        """Mean class probabilities; each target as the members' equal-weight Gaussian
        mixture: mean of the means, sigma = sqrt(mean of the variances + variance of the
        means), so the members' disagreement widens the uncertainty."""
        cols = super().combine(members, config)
        for name in config["targets"]:
            mu = np.array([m[name] for m in members], dtype=np.float64)
            var = np.array([m[f"{name}_sigma"] for m in members], dtype=np.float64) ** 2
            cols[f"{name}_sigma"] = np.sqrt(var.mean(0) + mu.var(0)).astype(np.float32)
        return cols

    def metrics(self, pred, labels, config):
        classes = self.class_names(config)
        probs = np.stack([pred[f"p_{c}"] for c in classes], axis=1)
        cls = np.asarray(labels[self.class_column]).astype(int)
        out = M.multiclass_auc(cls, probs, classes)
        for name, t in config["targets"].items():
            y = np.asarray(labels[name], dtype=np.float64)
            rows = (cls == t["class"]) & np.isfinite(y)
            reg = M.regression_metrics(y[rows], pred[name][rows], pred[f"{name}_sigma"][rows])
            out.update({f"{name}_{k}": v for k, v in reg.items()})
        return out

    def roc_curves(self, pred, labels, config):
        cls = np.asarray(labels[self.class_column]).astype(int)
        return {c: (cls == i, pred[f"p_{c}"]) for i, c in enumerate(self.class_names(config))}


class Denoise(Task):
    """Image-to-image denoising: predicts the clean image in the noisy input's normalised
    units; mean squared error there. Scored against the input too (the identity baseline)."""

    name = "denoise"
    label_columns = (CLEAN,)
    image_labels = (CLEAN,)
    eval_labels = (IMAGE,)

    def columns(self, config=None):
        return (IMAGE,)

    def num_outputs(self, config):
        return len(config["bands"])

    def model_kwargs(self, config):
        return {"in_channels": len(config["bands"])}  # image networks give back what they take

    def output_shape(self, config, input_shape):
        return tuple(input_shape)

    def loss(self, out, batch, config):
        import torch.nn.functional as F

        return F.mse_loss(out, batch[CLEAN])

    def decode(self, out, config, stats=None):
        # Without stats (training-time validation) the image stays in normalised units.
        img = out if stats is None else denormalize(out, *stats, config["normalization"])
        return {IMAGE: np.asarray(img, dtype=np.float32)}

    def metrics(self, pred, labels, config):
        return M.denoise_metrics(labels[CLEAN], pred[IMAGE], labels.get(IMAGE))


DENOISE, LENS_DETECT, SUBSTRUCTURE = Denoise(), LensDetect(), Substructure()
TASKS: dict[str, Task] = {t.name: t for t in (DENOISE, LENS_DETECT, SUBSTRUCTURE)}
STAGES: tuple[str, ...] = tuple(TASKS)  # the cascade's stage names, in cascade order


def get_task(name: str) -> Task:
    """The task object for ``name`` (one of :data:`STAGES`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]
