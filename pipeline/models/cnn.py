"""Image classifiers/regressors: the two published lens finders and a modern small ResNet.

Every network maps ``(N, bands, H, W)`` to ``(N, num_outputs)`` raw outputs; what those outputs
mean (a lens logit; class logits plus per-target mean and log-sigma) is decided by the task
(``tasks.py``), so one architecture serves lens finding and substructure alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.registry import register_model


def d4_transforms(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of the dihedral group D4 acting on the last two axes:
    ``k % 4`` quarter turns, mirrored first when ``k >= 4``. The sky has no preferred
    orientation or handedness, so these are exact symmetries of the data."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


class _D4Averaged(nn.Module):
    """Mixin behaviour: in eval mode, average the outputs over the 8 D4 transforms
    (test-time symmetrisation; makes the prediction exactly invariant)."""

    tta: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta:
            return self.forward_once(x)
        return torch.stack([self.forward_once(d4_transforms(x, k)) for k in range(8)]).mean(0)


# ------------------------------------------------------------------ CMU DeepLens (Lanusse+2018)
class _PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al. 2016) with ELU, as in CMU DeepLens."""

    def __init__(self, cin: int, width: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, cout, 1, bias=False)
        self.proj = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.elu(self.bn1(x))
        shortcut = self.proj(a) if self.proj is not None else x
        h = self.conv1(a)
        h = self.conv2(F.elu(self.bn2(h)))
        h = self.conv3(F.elu(self.bn3(h)))
        return h + shortcut


class DeepLensResNet(_D4Averaged):
    """CMU DeepLens: 7x7 stem, 5 stages x 3 pre-activation bottleneck units (46 conv layers),
    ELU, feature maps halved at each stage after the first, global average pooling."""

    def __init__(self, in_channels: int = 1, num_outputs: int = 1, base_width: int = 8,
                 units_per_stage: int = 3, stages: int = 5, tta: bool = False):
        super().__init__()
        self.tta = tta
        stem = 4 * base_width
        self.stem = nn.Conv2d(in_channels, stem, 7, 1, 3, bias=False)
        layers, cin = [], stem
        for s in range(stages):
            width = base_width * 2**s
            for u in range(units_per_stage):
                layers.append(_PreActBottleneck(cin, width, 4 * width, 2 if (u == 0 and s > 0) else 1))
                cin = 4 * width
        self.body = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_outputs)

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.bn(self.body(self.stem(x))))
        return self.head(h.mean(dim=(-2, -1)))


@register_model("lens-detect", "substructure",
                search_space={"model.base_width": ("choice", [4, 8])})
def deeplens_resnet(**cfg) -> nn.Module:
    """CMU DeepLens pre-activation bottleneck ResNet with ELU (Lanusse et al. 2018, arXiv
    1703.02642). Same topology as the paper; channel widths scaled by ``base_width`` (8 by
    default, for CPU)."""
    return DeepLensResNet(**cfg)


# ------------------------------------------------------------------ LASTRO EPFL (Schaefer+2018)
class LastroCNN(_D4Averaged):
    """LASTRO EPFL CNN: conv 16-16-32-32-64-64-128-128 (3x3, ReLU) with batch norm and
    max-pooling after each pair, then three dense layers of 1024 with dropout."""

    def __init__(self, in_channels: int = 1, num_outputs: int = 1, dense: int = 1024,
                 dropout: float = 0.5, tta: bool = False):
        super().__init__()
        self.tta = tta
        layers, cin = [], in_channels
        for i, c in enumerate((16, 32, 64, 128)):
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                       nn.BatchNorm2d(c), nn.MaxPool2d(2)]
            if i >= 2:
                layers.append(nn.Dropout(0.2))
            cin = c
        # Pools to 4x4 whatever the cutout size (identity for 64 px); keeps the dense layers small.
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 16, dense), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(dense, dense), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(dense, dense), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(dense, num_outputs),
        )

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lens-detect", "substructure",
                search_space={"model.dense": ("choice", [256, 512, 1024]),
                              "model.dropout": ("uniform", 0.2, 0.5)})
def lastro_cnn(**cfg) -> nn.Module:
    """LASTRO EPFL plain CNN (Schaefer et al. 2018, arXiv 1705.07132)."""
    return LastroCNN(**cfg)


# ------------------------------------------------------------------ modern: D4-averaged ResNet
class _PreActBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.silu(self.bn1(x))
        shortcut = self.proj(a) if self.proj is not None else x
        return self.conv2(F.silu(self.bn2(self.conv1(a)))) + shortcut


class D4ResNet(_D4Averaged):
    """Small pre-activation ResNet (SiLU) whose eval-mode output is averaged over the 8
    rotations/flips of D4; trained with the same symmetries as augmentation."""

    def __init__(self, in_channels: int = 1, num_outputs: int = 1,
                 widths: tuple[int, ...] = (24, 48, 96), blocks: int = 2,
                 dropout: float = 0.1, tta: bool = True):
        super().__init__()
        self.tta = tta
        widths = tuple(widths)  # a config's JSON list
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.SiLU(inplace=True),
        )
        layers, cin = [], widths[0]
        for w in widths:
            for b in range(blocks):
                layers.append(_PreActBasic(cin, w, 2 if b == 0 else 1))
                cin = w
        self.body = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * cin, num_outputs)

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.body(self.stem(x))))
        pooled = torch.cat([h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))], dim=1)
        return self.head(self.drop(pooled))


@register_model("lens-detect", "substructure", default_for=("lens-detect", "substructure"),
                search_space={"batch_size": ("choice", [32, 64]),
                              "model.widths": ("choice", [[16, 32, 64], [24, 48, 96]]),
                              "model.dropout": ("uniform", 0.0, 0.3)})
def d4_resnet(**cfg) -> nn.Module:
    """Small pre-activation ResNet with D4 test-time averaging (exact rotation/flip
    invariance at inference), sized for CPU training."""
    return D4ResNet(**cfg)
