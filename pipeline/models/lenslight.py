"""A lens finder that also sees the cutout with the central galaxy's light taken away.

The shipped finders miss arcs that sit inside bright deflectors (benchmarks/accuracy.md, "What
the finders miss"), and they flag real galaxies whose own light looks arc-like. Classical lens
searches subtract a smooth model of the lens light before looking for arcs (e.g. Gavazzi et al.
2014, RingFinder; Sonnenfeld et al. 2018, YattaLens). :func:`lens_light_residual` does the
cheapest robust version, with no fit and no learned weights: the median of each band in thin
elliptical annuli around the cutout's centre, the ellipse from the light's second moments. An
arc fills a small part of its annulus, so the median stays the galaxy's and the arc is left in
the residual; a smooth elliptical galaxy leaves almost nothing. The function commutes with the
rotations and flips of D4 (centre and moments turn with the image), so the D4-averaged network
stays exactly invariant.

``residual_d4_resnet`` is ``d4_resnet`` fed ``[image, residual]`` (twice the bands). It starts
from a trained ``d4_resnet`` (``--init``) whose first convolution gets zero weights for the
residual channels, so training begins at exactly that network's outputs.
"""

from __future__ import annotations

import torch

from pipeline.models.cnn import D4ResNet
from pipeline.models.registry import register_model

# A floor on the minor/major axis ratio of the annuli: the moments of a faint or noise-dominated
# cutout are noisy, and a needle-thin ellipse would cut an arc's annulus in two.
MIN_AXIS_RATIO = 0.3


def _ellipse_radius(x: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """Elliptical radius in pixels, ``(N, H, W)``, of the light of ``x`` ``(N, B, H, W)`` around
    the cutout's centre, from adaptive second moments of the band sum: each iteration weighs the
    light with a Gaussian window of the last ellipse's shape (a round window biases the axis
    ratio towards 1; one of the light's own shape does not, whatever the profile or stretch)."""
    _, _, h, w = x.shape
    yy = torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2
    xx = torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2
    dy, dx = torch.meshgrid(yy, xx, indexing="ij")
    light = x.sum(1).clamp(min=0) + 1e-6  # + a constant: a circle when there is no light
    radius = torch.sqrt(dx**2 + dy**2).expand_as(light)
    for _ in range(iterations):
        weights = light * torch.exp(-radius**2 / (2 * (min(h, w) / 8) ** 2))
        total = weights.sum((-2, -1))
        qxx, qyy, qxy = ((weights * a).sum((-2, -1)) / total for a in (dx * dx, dy * dy, dx * dy))
        # the major axis and axis ratio of [[qxx, qxy], [qxy, qyy]], in closed form
        half_tr, half_diff = (qxx + qyy) / 2, (qxx - qyy) / 2
        root = torch.sqrt(half_diff**2 + qxy**2)
        ratio = ((half_tr - root) / (half_tr + root)).clamp(min=0).sqrt()
        q = ratio.clamp(min=MIN_AXIS_RATIO)[:, None, None]
        angle = 0.5 * torch.atan2(qxy, half_diff)
        c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        major, minor = c * dx + s * dy, -s * dx + c * dy
        radius = torch.sqrt(q * major**2 + minor**2 / q)  # annuli of the same area for any q
    return radius


@torch.no_grad()
def lens_light_residual(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, B, H, W)`` minus, per image and band, the median of its one-pixel-wide
    elliptical annulus (:func:`_ellipse_radius`) at every pixel."""
    n, b, h, w = x.shape
    x32 = x.float()
    ring = _ellipse_radius(x32).floor().long().flatten(1)  # (N, HW)
    n_rings = int(ring.max()) + 1
    ring = ring[:, None].expand(n, b, h * w)
    # one sort per image and band: by annulus, then by value (values squashed into [0, 1))
    squashed = torch.sigmoid(x32.flatten(2).double()).clamp(max=1 - 1e-12)
    order = torch.argsort(ring.double() + squashed, dim=-1)
    sorted_values = torch.gather(x32.flatten(2), -1, order)
    counts = torch.zeros(n, b, n_rings, dtype=torch.long, device=x.device)
    counts.scatter_add_(-1, ring, torch.ones_like(ring))
    start = torch.cumsum(counts, -1) - counts
    median_at = torch.gather(start + (counts - 1) // 2, -1, ring)  # (N, B, HW)
    model = torch.gather(sorted_values, -1, median_at)
    return (x32.flatten(2) - model).view(n, b, h, w).to(x.dtype)


class ResidualD4ResNet(D4ResNet):
    """:class:`D4ResNet` on ``[image, lens_light_residual(image)]``; ``in_channels`` are the
    survey's bands (the network's first convolution takes twice as many)."""

    def __init__(self, in_channels: int = 1, **kwargs):
        super().__init__(in_channels=2 * in_channels, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # once, before D4 averaging: the residual turns with the image
        return super().forward(torch.cat([x, lens_light_residual(x)], dim=1))

    def init_from(self, state: dict) -> None:
        """Start from a trained ``d4_resnet``: its weights, and zeros on the residual channels
        of the first convolution (so the outputs are that network's at the start)."""
        state = dict(state)
        stem = state["stem.0.weight"]
        state["stem.0.weight"] = torch.cat([stem, torch.zeros_like(stem)], dim=1)
        self.load_state_dict(state)


def _d4_resnet(kwargs: dict) -> tuple[str, dict]:
    return "d4_resnet", kwargs


@register_model("lens-detect", init_from=_d4_resnet)
def residual_d4_resnet(**cfg) -> torch.nn.Module:
    """``d4_resnet`` that also sees the cutout minus a median model of the central galaxy's
    light in elliptical annuli (``pipeline/models/lenslight.py``); starts from a trained
    ``d4_resnet`` (``--init``)."""
    return ResidualD4ResNet(**cfg)
