"""``lensray run --demo``: a small simulated field, then the main job on it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

MIN_N = 8  # cutouts: the smallest field that still holds lenses and non-lenses
SHARDS = 4  # the field's files
LENS_FRACTION = 0.03


def run_demo(out: str | os.PathLike, *, n: int = 300, seed: int = 0,
             lens_fraction: float = LENS_FRACTION, survey: str | None = None,
             progress: bool = True, **cascade_kwargs) -> dict:
    """Simulate a small field of ``survey`` (None: the default survey, Euclid VIS; ``n``
    cutouts, a few percent lenses) under ``out/demo-field`` (:func:`simulate_field`), then run
    the cascade on it (:func:`pipeline.run.run_cascade`; the simulation's seconds are in the
    summary's timings). A rerun reuses the field (and the finished shards of the catalogue).
    """
    from pipeline.run import run_cascade
    from pipeline.simulate import get_preset
    from pipeline.surveys import get_survey

    if "://" in os.fspath(out):
        raise ValueError(f"{out}: the demo simulates its field into OUT/demo-field on this "
                         "machine; give a local --out")
    chosen = get_survey(survey)
    t0 = time.perf_counter()
    paths = simulate_field(Path(out) / "demo-field", n, seed, survey=chosen.name,
                           lens_fraction=lens_fraction, progress=progress)
    timings = {"simulate": round(time.perf_counter() - t0, 3)}  # ~0 when the field is reused
    # the field is at its preset's pixel scale, whether or not its shards say so
    preset = get_preset(chosen.preset)
    cascade_kwargs["pixel_scale"] = cascade_kwargs.get("pixel_scale") or preset.pixel_scale
    return run_cascade(paths, out, survey=chosen.name, progress=progress, timings=timings,
                       **cascade_kwargs)


def simulate_field(field: str | os.PathLike, n: int, seed: int, *, survey: str | None = None,
                   lens_fraction: float = LENS_FRACTION, progress: bool = True) -> list[str]:
    """The shard paths of a field of ``n`` cutouts of ``survey``'s preset in ``field``,
    simulated there unless it holds this field already (another one is refused).

    Every field holds lenses, whatever the seed: the simulator apportions the classes of each
    of the :data:`SHARDS` files exactly, so the fraction is raised to one lens per file where
    ``lens_fraction`` would round to none (``n`` >= :data:`MIN_N` keeps non-lenses too).
    """
    from pipeline.simulate import get_preset, read_manifest, shard_paths, simulate
    from pipeline.surveys import get_survey

    if n < MIN_N:
        raise ValueError(f"the demo field needs at least {MIN_N} cutouts, got {n}")
    preset = get_preset(get_survey(survey).preset)
    try:
        made = read_manifest(field)
    except FileNotFoundError:
        per_file = math.ceil(n / SHARDS)
        simulate(preset.name, "lens", n=n, seed=seed, out=field,
                 priors={"lens_fraction": max(lens_fraction, 1.0 / per_file + 1e-9)},
                 split_fractions=(0.0, 0.0, 1.0), shard_size=per_file, overwrite=True,
                 progress=progress)
    else:
        if (made.get("n"), made.get("seed"), made.get("preset")) != (n, seed, preset.name):
            raise ValueError(f"{field} holds another field (n={made.get('n')}, seed="
                             f"{made.get('seed')}, {made.get('preset')}); write to a new --out")
    return shard_paths(field, "test")
