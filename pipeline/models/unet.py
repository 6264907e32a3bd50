"""UNet-style denoiser (Ronneberger et al. 2015), small enough to train on a CPU.

It predicts the clean image as ``input + residual`` in the normalised space of
``normalize.py`` (noise units), which keeps the identity as the easy starting point.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.models.registry import register_model


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; ``depth`` poolings, widths doubling."""

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base: int = 16,
                 depth: int = 3, residual: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.residual = residual and out_channels == in_channels
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.merge.append(_double_conv(2 * w, w))
            cin = w
        self.out = nn.Conv2d(cin, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            s = skips.pop()
            h = up(h)
            if h.shape[-2:] != s.shape[-2:]:  # odd sizes: pad to the skip's shape
                h = F.pad(h, (0, s.shape[-1] - h.shape[-1], 0, s.shape[-2] - h.shape[-2]))
            h = merge(torch.cat([h, s], dim=1))
        y = self.out(h)
        return x + y if self.residual else y


@register_model("denoise", default_for=("denoise",),
                search_space={"model.base": ("choice", [8, 16]), "model.depth": ("choice", [2, 3])})
def unet_denoiser(**cfg) -> nn.Module:
    """Small UNet denoiser (bands in, bands out, residual)."""
    return UNet(**cfg)
