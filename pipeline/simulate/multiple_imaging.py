"""Is a source strongly lensed? The images of a point at the source's centre under the macro lens.

A strong lens shows its source more than once. A source drawn within some fraction of theta_E of
the deflector is not always multiply imaged: shallow (gamma < 2), elliptical and sheared mass
profiles have caustics that leave part of that disk outside, where the source is only distorted.
Labelled "lens", such a row asks the finder to call a merely distorted galaxy a lens, so the
simulator redraws the source position until it is multiply imaged (``scenes.add_lens``) and
records the image count and the total magnification (``n_images``, ``mu_total``; Collett 2015's
detectability criteria ask ``mu_total >= 3`` beside an arc S/N >= 20, as
``benchmarks/detectability.py`` reports).

The lens equation is solved with lenstronomy's analytical EPL + shear solver (Tessore & Metcalf
2015; about a millisecond), and where it finds fewer than two images, also with its
grid-and-refine solver (tens of milliseconds).
"""

from __future__ import annotations

from functools import cache

import numpy as np

# An image demagnified below this is invisible: the central image of a cored or shallow profile
# (|mu| ~ 1e-9 - 0.07 in the euclid-vis priors, against >= 0.2 for 95% of the others).
MIN_IMAGE_MAGNIFICATION = 0.1
MACRO_MODEL = ("EPL_NUMBA", "SHEAR")  # the simulator's lens: scenes.add_lens


@cache
def _solver():
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    model = LensModel(list(MACRO_MODEL))
    return model, LensEquationSolver(model)


def point_images(lens: list[tuple[str, dict]], x_source: float, y_source: float
                 ) -> tuple[int, float]:
    """The number of visible images (``|mu| >= MIN_IMAGE_MAGNIFICATION``) of a point source at
    (``x_source``, ``y_source``) (") behind the macro ``lens`` [(name, kwargs)] (EPL + SHEAR,
    as ``scenes.add_lens`` builds it), and their total magnification ``sum |mu|``."""
    names = tuple(name for name, _ in lens)
    if names != MACRO_MODEL:
        raise ValueError(f"point_images solves an EPL + shear lens {MACRO_MODEL}, not {names}")
    model, solver = _solver()
    kwargs = [k for _, k in lens]
    theta_e = kwargs[0]["theta_E"]
    best = np.zeros(0)
    # Each solver can miss images, neither invents one: the analytical one (fast) misses them for
    # near-round lenses, the grid-and-refine one near degenerate (ring-like) configurations.
    for options in ({"solver": "analytical"},
                    {"search_window": 6 * theta_e, "min_distance": 0.03 * theta_e,
                     "precision_limit": 1e-8, "num_iter_max": 50, "arrival_time_sort": False}):
        with np.errstate(invalid="ignore", divide="ignore"):  # the analytical one's degenerate roots
            x, y = solver.image_position_from_source(x_source, y_source, kwargs, **options)
        mu = np.abs(model.magnification(x, y, kwargs)) if len(x) else np.zeros(0)
        mu = mu[mu >= MIN_IMAGE_MAGNIFICATION]
        if mu.size > best.size:
            best = mu
        if best.size >= 2:
            break
    if not best.size:  # every source has at least one image
        raise RuntimeError(f"no image found for a source at ({x_source}, {y_source}): {lens}")
    return int(best.size), float(best.sum())
