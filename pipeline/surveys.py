"""Surveys, one record each: the geometry its shipped models take (bands by name, pixel scale,
cutout side), the simulator preset that makes its training data, and where its shipped weights
are. What differs between surveys is written here and nowhere else, and so is the rule that
matches a file's band names to a survey's (:func:`match_bands`), which both the choice of a
survey from the data (:func:`survey_for_bands`) and the models' band picking use.

``euclid-vis`` weights predate this registry and sit at the top of ``pipeline/weights/``, one
directory per stage; every other survey's are under ``pipeline/weights/<weights>/<stage>/``.
A survey may ship weights for some stages only (docs/surveys.md says which); a stage without
them needs a checkpoint of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
    Survey("ground-gri", bands=("g", "r", "i"), pixel_scale=0.2, size=64, preset="ground-gri",
           weights="ground-gri"),
    Survey("hst", bands=("F160W",), pixel_scale=0.08, size=64, preset="hst", weights="hst"),
)}
DEFAULT_SURVEY = "euclid-vis"


def get_survey(name: str | None = None) -> Survey:
    """The survey called ``name`` (None: :data:`DEFAULT_SURVEY`)."""
    name = name or DEFAULT_SURVEY
    if name not in SURVEYS:
        raise ValueError(f"unknown survey {name!r} (known: {', '.join(SURVEYS)})")
    return SURVEYS[name]


# ----------------------------------------------------------------------------- band names
def _token(name: str) -> str:
    """The last word of a band name: 'HSC_G' -> 'g', 'DECam-r' -> 'r', 'VIS' -> 'vis'."""
    return re.split(r"[\s_.\-]+", name.strip())[-1].lower()


def match_bands(wanted: Sequence[str], names: Sequence[str] | None, nplanes: int) -> list[int]:
    """Indices of the ``wanted`` bands among a cutout's ``nplanes`` planes.

    Named planes (``names``) match a wanted band by the whole name or, failing that, by its last
    word, case-insensitively (``VIS`` = ``vis``; ``g`` = ``HSC_G`` = ``DECam-g``); a name that
    matches no plane, or two, is an error. Unnamed planes (``names`` None) are taken in order
    when there are exactly as many as wanted.

    Raises:
        ValueError: saying what the cutout has ("1 band VIS", "5 unnamed bands").
    """
    if not names:
        if nplanes == len(wanted):
            return list(range(nplanes))
        raise ValueError(f"file has {nplanes} unnamed band{'s' * (nplanes != 1)}")
    lower = [n.strip().lower() for n in names]
    picks = []
    for band in wanted:
        b = band.lower()
        hits = [i for i, n in enumerate(lower) if n == b] or [
            i for i, n in enumerate(names) if _token(n) == b]
        if len(hits) != 1:
            has = f"{len(names)} band{'s' * (len(names) != 1)} {','.join(names)}"
            raise ValueError(f"file has {has}" + (f" ({band} is ambiguous)" if hits else ""))
        picks.append(hits[0])
    return picks


def survey_for_bands(names: Sequence[str] | None) -> Survey | None:
    """The first survey (in :data:`SURVEYS` order) whose bands all match ``names``
    (:func:`match_bands`); None for unnamed bands or when no survey's do."""
    if not names:
        return None
    for survey in SURVEYS.values():
        try:
            match_bands(survey.bands, names, len(names))
        except ValueError:
            continue
        return survey
    return None
