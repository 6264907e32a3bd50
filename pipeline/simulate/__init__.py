"""Labelled survey cutouts rendered with lenstronomy (or caustics), generated in parallel on Ray.

    from pipeline.simulate import simulate, shard_paths
    simulate("euclid-vis", "lens", n=2000, seed=1, out="data/vis-lens")
    train = shard_paths("data/vis-lens", "train")   # -> pipeline.read_cutouts(train)

Modules: ``instruments`` (presets), ``priors`` (every prior, one place), ``scenes`` (drawing one
cutout's parameters), ``substructure`` (subhalo/vortex physics), ``render`` (lenstronomy),
``caustics_backend`` (PyTorch), ``noise`` (noise and arc S/N), ``generate`` (Ray + manifest).
"""

from pipeline.simulate.generate import (
    SimConfig,
    make_config,
    read_manifest,
    shard_paths,
    simulate,
)
from pipeline.simulate.instruments import PRESETS, Band, ConfigError, Preset, get_preset
from pipeline.simulate.priors import Priors, default_priors

__all__ = [
    "PRESETS", "Band", "ConfigError", "Preset", "Priors", "SimConfig", "default_priors",
    "get_preset", "make_config", "read_manifest", "shard_paths", "simulate",
]
