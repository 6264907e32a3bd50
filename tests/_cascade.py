"""Test helpers for the cascade: real (freshly initialised, small) checkpoints and cube shards.

The stage plumbing is tested against real safetensors checkpoints written by
``pipeline.models.save_checkpoint``; whether the shipped weights find lenses is tested by the
models' own tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.models.normalize import DEFAULT_NORMALIZATION

SIZE = 32
BANDS = ["VIS"]
PIXEL_SCALE = 0.1  # arcsec/px of the test checkpoints and shards

_SPECS = {
    "denoise": ("unet_denoiser", {"in_channels": 1, "base": 4, "depth": 2}),
    "lens-detect": ("lastro_cnn", {"in_channels": 1, "num_outputs": 1, "dense": 16}),
    "substructure": ("lastro_cnn", {"in_channels": 1, "num_outputs": 7, "dense": 16}),
}


def make_checkpoints(root: Path, seed: int = 0, size: int = SIZE) -> dict[str, Path]:
    """One small, freshly initialised checkpoint per stage under ``root/<stage>``."""
    import torch

    from pipeline import __version__
    from pipeline.models import create_model, save_checkpoint

    out = {}
    for i, (task, (name, kwargs)) in enumerate(_SPECS.items()):
        torch.manual_seed(seed + i)
        model = create_model(name, **kwargs).eval()
        if task != "denoise":
            _spread_outputs(model, size)
        config = {
            "task": task, "model": name, "model_kwargs": kwargs, "bands": BANDS, "size": size,
            "pixel_scale": PIXEL_SCALE, "normalization": dict(DEFAULT_NORMALIZATION),
            "lensray_version": __version__, "trained": {"note": "untrained test checkpoint"},
            "metrics": {},
        }
        if task == "substructure":
            config["classes"] = ["no_sub", "cdm", "vortex"]
            config["targets"] = {
                "log10_m_axion": {"mean": -22.5, "std": 0.6, "class": 2},
                "sigma_sub": {"mean": 0.05, "std": 0.03, "class": 1},
            }
        out[task] = save_checkpoint(model, config, root / task)
    return out


def _spread_outputs(model, size: int) -> None:
    """Rescale the last layer so outputs vary by O(1) across images (an untrained network's
    outputs are nearly constant), which makes row-alignment checks meaningful."""
    import torch

    from pipeline.models.normalize import normalize

    z, _, _ = normalize(make_images(64, seed=99, size=size))
    last = model.classifier[-1]
    with torch.no_grad():
        logits = model(torch.from_numpy(z)).numpy()
        mean, std = logits.mean(0), logits.std(0) + 1e-12
        last.weight.mul_(torch.from_numpy(2 / std)[:, None].float())
        last.bias.copy_(last.bias * torch.from_numpy(2 / std).float()
                        - torch.from_numpy(2 * mean / std).float())


def make_images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Noise plus a Gaussian blob of random brightness: (n, 1, size, size) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 10) ** 2))
    amp = rng.uniform(0, 50, size=(n, 1, 1, 1))
    return (100 + rng.normal(0, 5, (n, 1, size, size)) + amp * blob).astype(np.float32)


def make_shards(directory: Path, counts: list[int], seed: int = 0, size: int = SIZE) -> list[Path]:
    """Cube shards with ``counts[i]`` cutouts each, written by ``pipeline.io.write_cube_shard``."""
    from pipeline.io import write_cube_shard

    paths = []
    for i, n in enumerate(counts):
        images = make_images(n, seed + i, size)
        table = {"id": np.array([f"s{i}-{j}" for j in range(n)]),
                 "ra": np.linspace(150, 151, n), "dec": np.linspace(2, 3, n)}
        paths.append(write_cube_shard(directory / f"shard-{i:03d}.fits", images, table, BANDS,
                                      pixel_scale=PIXEL_SCALE))
    return paths
