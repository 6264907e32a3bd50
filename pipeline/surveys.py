"""Surveys, one record each: the geometry its shipped models take (bands by name, pixel scale,
cutout side), the simulator preset that makes its training data, and where its shipped weights
are. What differs between surveys is written here and nowhere else.

Only ``euclid-vis`` ships weights today (they predate this registry and sit at the top of
``pipeline/weights/``, one directory per stage); a survey with models of its own adds a record
here and its weights under ``pipeline/weights/<weights>/<stage>/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Survey:
    """One survey's facts.

    Attributes:
        name: what users pass to choose it.
        bands: band names, in the order the models take them.
        pixel_scale: arcsec per pixel the models take.
        size: cutout side in pixels the models take.
        preset: the simulator preset of its training data (``pipeline.simulate.PRESETS``).
        weights: directory under ``pipeline/weights/`` with one checkpoint directory per stage
            it ships ("" for the top).
    """

    name: str
    bands: tuple[str, ...]
    pixel_scale: float
    size: int
    preset: str
    weights: str


SURVEYS: dict[str, Survey] = {s.name: s for s in (
    Survey("euclid-vis", bands=("VIS",), pixel_scale=0.101, size=64, preset="euclid-vis",
           weights=""),
)}
DEFAULT_SURVEY = "euclid-vis"


def get_survey(name: str | None = None) -> Survey:
    """The survey called ``name`` (None: :data:`DEFAULT_SURVEY`)."""
    name = name or DEFAULT_SURVEY
    if name not in SURVEYS:
        raise ValueError(f"unknown survey {name!r} (known: {', '.join(SURVEYS)})")
    return SURVEYS[name]
