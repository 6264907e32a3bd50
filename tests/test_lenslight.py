"""The lens-light residual: it removes a smooth elliptical galaxy, keeps an arc, turns with the
image, and ``residual_d4_resnet`` starts as the ``d4_resnet`` it is built from."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.models import create_model
from pipeline.models.cnn import d4_transforms
from pipeline.models.lenslight import _ellipse_radius, lens_light_residual
from pipeline.models.registry import init_network

H = 64


def _grid():
    c = (H - 1) / 2
    return torch.meshgrid(torch.arange(H) - c, torch.arange(H) - c, indexing="ij")


def _sersic(q=0.5, angle=0.6, r_eff=6.0, n=4.0, i_eff=3.0):
    """An elliptical Sérsic galaxy, in the asinh units the networks see."""
    dy, dx = _grid()
    ca, sa = math.cos(angle), math.sin(angle)
    major, minor = ca * dx + sa * dy, -sa * dx + ca * dy
    r = torch.sqrt(q * major**2 + minor**2 / q)
    b = 2 * n - 1 / 3
    return torch.asinh(i_eff * torch.exp(-b * ((r / r_eff) ** (1 / n) - 1)))


def _arc(radius=11.0, half_angle=0.5, amplitude=1.5):
    """A tangential arc a quarter of its circle long: what a lens adds."""
    dy, dx = _grid()
    r, phi = torch.sqrt(dx**2 + dy**2), torch.atan2(dy, dx)
    return amplitude * torch.exp(-((r - radius) ** 2) / 2.0) * (phi.abs() < half_angle)


@pytest.mark.parametrize("q,angle", [(1.0, 0.0), (0.5, 0.6), (0.35, -1.2)])
def test_residual_removes_the_galaxy_and_keeps_the_arc(q, angle):
    gen = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(H, H, generator=gen)
    galaxy, arc = _sersic(q, angle), _arc()
    lens = lens_light_residual((galaxy + arc + noise)[None, None])[0, 0]
    alone = lens_light_residual((galaxy + noise)[None, None])[0, 0]
    on_arc = arc > 0.5 * arc.max()
    bright = galaxy > 0.5  # where the galaxy is bright against the noise
    # the galaxy alone leaves residuals of about the noise and the annuli's width ...
    assert alone[bright].abs().mean() < 0.1 * galaxy[bright].mean()
    assert alone[on_arc].abs().mean() < 0.15 * arc[on_arc].mean()
    # ... and the arc comes through, most of its brightness kept
    assert lens[on_arc].mean() > 0.8 * arc[on_arc].mean()
    assert (lens - alone)[on_arc].mean() > 0.8 * arc[on_arc].mean()


def test_residual_turns_with_the_image_and_keeps_shape_and_dtype():
    x = _sersic()[None, None] + _arc()[None, None] + torch.randn(5, 3, H, H)
    res = lens_light_residual(x)
    assert res.shape == x.shape and res.dtype == x.dtype
    for k in range(8):  # D4: every rotation and flip
        assert torch.equal(lens_light_residual(d4_transforms(x, k)), d4_transforms(res, k))
    # against a plain loop: each band minus its own median (the lower one) in each annulus, the
    # annuli from the light of all bands
    ring = _ellipse_radius(x[:1]).floor()[0]
    for band in range(3):
        ref = x[0, band].clone()
        for k in ring.unique():
            ref[ring == k] -= x[0, band][ring == k].median()
        torch.testing.assert_close(res[0, band], ref)


def test_residual_d4_resnet_starts_as_its_d4_resnet_and_stays_invariant():
    assert init_network("residual_d4_resnet", {"in_channels": 3, "num_outputs": 1}) == (
        "d4_resnet", {"in_channels": 3, "num_outputs": 1})
    torch.manual_seed(0)
    base = create_model("d4_resnet", in_channels=3, num_outputs=1).eval()
    model = create_model("residual_d4_resnet", in_channels=3, num_outputs=1).eval()
    model.init_from(base.state_dict())
    assert model.stem[0].in_channels == 6
    x = torch.randn(4, 3, H, H) + _sersic()
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))
        model.stem[0].weight[:, 3:].normal_()  # once trained, the residual matters ...
        out = model(x)
        assert not torch.allclose(out, base(x))
        for k in (1, 3, 5):  # ... and the prediction stays exactly D4-invariant
            torch.testing.assert_close(model(d4_transforms(x, k)), out, atol=1e-5, rtol=1e-5)
