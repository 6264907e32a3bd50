"""Sky-symmetry augmentation, in one place: the sky has no up, no handedness and no exact
centring or size, so training sees every cutout under a random element of D4 (flips and
quarter turns, exact), a small integer shift and, sometimes, a small rescaling.

Shifts are whole pixels and D4 is exact, so both leave the pixel noise untouched; rescaling
interpolates (and so smooths the noise), hence it is applied only to a fraction of cutouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.cnn import d4_transforms


def augment(images: list[torch.Tensor], generator: torch.Generator | None = None,
            max_shift: int = 2, max_scale: float = 0.1, p_scale: float = 0.3) -> list[torch.Tensor]:
    """Apply one random sky symmetry per cutout, identically to every tensor in ``images``
    (e.g. a noisy input and its clean target). Each tensor is (N, C, H, W); returns new tensors."""
    x = torch.cat(images, dim=1)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    dev = x.device
    g = generator
    # D4: group the batch by element, transform each group exactly.
    k = torch.randint(0, 8, (n,), generator=g).to(dev)
    out = torch.empty_like(x)
    for e in range(8):
        sel = k == e
        if sel.any():
            out[sel] = d4_transforms(x[sel], e) if h == w else x[sel]
    x = out
    # Integer shifts: roll then fill the wrapped strip from the opposite edge (reflection-free,
    # noise-like content stays noise-like).
    if max_shift > 0:
        sy = torch.randint(-max_shift, max_shift + 1, (n,), generator=g).tolist()
        sx = torch.randint(-max_shift, max_shift + 1, (n,), generator=g).tolist()
        x = torch.stack([torch.roll(x[i], (sy[i], sx[i]), dims=(-2, -1)) for i in range(n)])
    # Small rescaling about the centre for a fraction of the batch.
    if max_scale > 0 and p_scale > 0:
        pick = torch.rand(n, generator=g) < p_scale
        if pick.any():
            s = 1 + (torch.rand(int(pick.sum()), generator=g) * 2 - 1) * max_scale
            theta = torch.zeros(len(s), 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
            grid = F.affine_grid(theta.to(dev), list(x[pick.to(dev)].shape), align_corners=False)
            x[pick.to(dev)] = F.grid_sample(x[pick.to(dev)], grid, mode="bilinear",
                                            padding_mode="reflection", align_corners=False)
    return list(torch.split(x, [t.shape[1] for t in images], dim=1))
