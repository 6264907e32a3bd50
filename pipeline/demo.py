"""``lensray run --demo``: a small simulated field, then the main job on it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

MIN_N = 8  # cutouts: the smallest field that still holds a lens and non-lenses
SHARDS = 4  # the field's files


def run_demo(out: str | os.PathLike, *, n: int = 300, seed: int = 0, lens_fraction: float = 0.03,
             survey: str | None = None, progress: bool = True, **cascade_kwargs) -> dict:
    """Simulate a small field of ``survey`` (None: the default survey, Euclid VIS; ``n``
    cutouts, a few percent lenses) under ``out/demo-field`` with the lenstronomy simulator, then
    run the cascade on it (:func:`pipeline.run.run_cascade`; the simulation's seconds are in
    the summary's timings).

    Every field holds lenses, whatever the seed: the simulator apportions classes per file, so
    the first file gets at least one (the fraction is raised to one per file where
    ``lens_fraction`` would give none). The field is simulated once: a rerun reuses it (and the
    finished shards of the catalogue).
    """
    from pipeline.run import run_cascade
    from pipeline.simulate import get_preset, read_manifest, shard_paths, simulate
    from pipeline.surveys import get_survey

    if n < MIN_N:
        raise ValueError(f"the demo field needs at least {MIN_N} cutouts, got {n}")
    if "://" in os.fspath(out):
        raise ValueError(f"{out}: the demo simulates its field into OUT/demo-field on this "
                         "machine; give a local --out")
    out = Path(out)
    field = out / "demo-field"
    chosen = get_survey(survey)
    preset = get_preset(chosen.preset)
    t0 = time.perf_counter()
    try:
        made = read_manifest(field)
        timings = {}
        if (made.get("n"), made.get("seed"), made.get("preset")) != (n, seed, preset.name):
            raise ValueError(f"{field} holds another field (n={made.get('n')}, seed="
                             f"{made.get('seed')}, {made.get('preset')}); write to a new --out")
    except (FileNotFoundError, OSError):
        per_file = math.ceil(n / SHARDS)
        simulate(preset.name, "lens", n=n, seed=seed, out=field,
                 priors={"lens_fraction": max(lens_fraction, 1.0 / per_file + 1e-9)},
                 split_fractions=(0.0, 0.0, 1.0), shard_size=per_file, overwrite=True,
                 progress=progress)
        timings = {"simulate": round(time.perf_counter() - t0, 3)}
    # the field is at its preset's pixel scale, whether or not its shards say so
    cascade_kwargs["pixel_scale"] = cascade_kwargs.get("pixel_scale") or preset.pixel_scale
    return run_cascade(shard_paths(field, "test"), out, survey=chosen.name, progress=progress,
                       timings=timings, **cascade_kwargs)
