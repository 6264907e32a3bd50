"""A classifier and a regressor in one checkpoint: ``two_tower``.

On one shared trunk the substructure classes and the dark-matter parameters compete: the
classes must be found first (regression at full weight from the start stalls at chance), and
afterwards every epoch spends two thirds of its rows on images that carry no axion mass. So
the shipped substructure model has two towers of the same network:

* ``classifier``: a trained substructure model, **frozen** (weights and batch-norm statistics);
* ``regressor``: a copy of it, fine-tuned for the regression outputs only, on the rows that
  carry its targets (``--train-classes vortex``: log10_m_axion only; the other targets keep
  the classifier's heads).

Both towers keep the classifier's target standardisation (``targets`` of the init checkpoint).

The output keeps the task's layout (class logits from the classifier, means and log-sigmas
from the regressor), so the task, ``predict``, the stages and checkpoints need nothing new.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.models.registry import create_model, register_model
from pipeline.models.tasks import get_task

DEFAULT_TOWER = "d4_resnet"


class TwoTower(nn.Module):
    """Class logits from a frozen ``classifier`` tower, regression outputs from a
    ``regressor`` tower; both are the registered network ``tower``.

    Args:
        num_classes: leading class logits; then ``(num_outputs - num_classes) / 2`` targets,
            means first, log-sigmas after (the substructure task's layout).
        regressor_targets: the target positions the regressor provides (None: all); the
            others keep the classifier's own regression heads (e.g. a regressor trained on
            vortex rows only provides log10_m_axion, and sigma_sub stays the classifier's).
    """

    def __init__(self, tower: str = DEFAULT_TOWER, num_classes: int = 3, in_channels: int = 1,
                 num_outputs: int = 7, regressor_targets: list[int] | None = None,
                 **tower_kwargs):
        super().__init__()
        n_targets, odd = divmod(num_outputs - num_classes, 2)
        if num_classes < 1 or n_targets < 1 or odd:
            raise ValueError(f"two_tower: {num_outputs} outputs are not {num_classes} class "
                             "logits + (mean, log-sigma) per target")
        picks = range(n_targets) if regressor_targets is None else regressor_targets
        if not set(picks) <= set(range(n_targets)) or not picks:
            raise ValueError(f"two_tower: regressor_targets {regressor_targets} not in "
                             f"0..{n_targets - 1}")
        take = torch.zeros(num_outputs, dtype=torch.bool)
        for j in picks:
            take[num_classes + j] = take[num_classes + n_targets + j] = True
        self.register_buffer("take", take, persistent=False)  # outputs from the regressor
        self.classifier, self.regressor = (
            create_model(tower, in_channels=in_channels, num_outputs=num_outputs, **tower_kwargs)
            for _ in range(2))
        self.classifier.requires_grad_(False)

    def train(self, mode: bool = True) -> TwoTower:
        super().train(mode)
        self.classifier.eval()  # frozen: its batch-norm statistics stay the trained ones
        return self

    @property
    def tta(self) -> bool:
        return getattr(self.regressor, "tta", False)

    @tta.setter
    def tta(self, value: bool) -> None:
        for t in (self.classifier, self.regressor):
            if hasattr(t, "tta"):
                t.tta = value

    def init_from(self, state: dict) -> None:
        """Start both towers from one checkpoint of the tower network (the trained classifier)."""
        for t in (self.classifier, self.regressor):
            t.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg = self.regressor(x)
        # The frozen classifier gets no gradient, so while training its outputs only add
        # constant loss terms: zeros (a class loss of log(num_classes)) save its forward pass.
        base = reg.new_zeros(reg.shape) if self.training else self.classifier(x)
        return torch.where(self.take, reg, base)


def _tower(kwargs: dict) -> tuple[str, dict]:
    """The tower network (name, kwargs) whose trained checkpoint starts both towers."""
    kw = {k: v for k, v in kwargs.items() if k not in ("tower", "num_classes", "regressor_targets")}
    return kwargs.get("tower", DEFAULT_TOWER), kw


def _task_kwargs(config: dict) -> dict:
    """From a substructure config: the number of classes and the targets the regressor provides
    (those of the classes it trains on, ``train_classes``; all by default)."""
    classes = get_task(config["task"]).class_names(config)
    keep = [classes.index(c) for c in config.get("train_classes") or classes]
    return {"num_classes": len(classes),
            "regressor_targets": [j for j, t in enumerate(config["targets"].values())
                                  if t["class"] in keep]}


@register_model("substructure", init_from=_tower, task_kwargs=_task_kwargs)
def two_tower(**cfg) -> nn.Module:
    """Frozen classifier tower + fine-tuned regressor tower (see module docstring)."""
    return TwoTower(**cfg)
