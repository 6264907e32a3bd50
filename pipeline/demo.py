"""``lensray run --demo``: a small simulated field, then the main job on it."""

from __future__ import annotations

import os
from pathlib import Path


def run_demo(out: str | os.PathLike, *, n: int = 300, seed: int = 0, lens_fraction: float = 0.03,
             survey: str | None = None, progress: bool = True, **cascade_kwargs) -> dict:
    """Simulate a small field of ``survey`` (None: the default survey, Euclid VIS; ``n``
    cutouts, a few percent lenses) under ``out/demo-field`` with the lenstronomy simulator, then
    run the cascade on it (:func:`pipeline.run.run_cascade`).

    The field is simulated once: a rerun reuses it (and the finished shards of the catalogue).
    """
    from pipeline.run import run_cascade
    from pipeline.simulate import read_manifest, shard_paths, simulate
    from pipeline.surveys import get_survey

    out = Path(out)
    field = out / "demo-field"
    try:
        read_manifest(field)
    except (FileNotFoundError, OSError):
        simulate(get_survey(survey).preset, "lens", n=n, seed=seed, out=field,
                 priors={"lens_fraction": lens_fraction}, split_fractions=(0.0, 0.0, 1.0),
                 shard_size=max(1, -(-n // 4)), overwrite=True, progress=progress)
    return run_cascade(shard_paths(field, "test"), out, progress=progress, **cascade_kwargs)
