"""Stages of the cascade: ``Denoise``, ``LensDetect``, ``Substructure`` (and your own).

A stage object plays two parts. On the driver it is a light *spec*: its options (checkpoint,
threshold, ...) and the resources its actors need, validated at once so a bad config fails
before any work. ``Pipeline`` then maps it over a Ray Dataset with
``ds.map_batches(type(stage), fn_constructor_kwargs=stage.options, ...)``, so Ray builds the
same class again inside each actor, where the first batch loads the model (once per actor).

All stages share one protocol, implemented once in :class:`Stage`:

- ``select(batch)`` picks the rows to compute on (default: rows read without error);
- ``compute(rows)`` gets a writable NumPy batch of only those rows and returns new columns;
  it may also return an ``error`` column: rows with a reason become error rows (their new
  columns null), so a row the stage cannot take never stops the job;
- ``__call__`` puts the columns back in place; rows not computed keep an existing column's
  value or get a null (NaN for floats, ``None`` for strings, ``False`` for flags). No row is
  ever dropped, so ``rows in = rows out`` at every stage.

A custom stage subclasses :class:`Stage`, sets ``name``/``reads``/``writes`` and implements
``compute`` (and ``setup`` for anything to load once per actor); see docs/cascade.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.io import schema
from pipeline.io.schema import CANDIDATE
from pipeline.models import fit, tasks
from pipeline.models.tasks import DENOISE, LENS_DETECT, P_LENS, P_LENS_STD, STAGES, SUBSTRUCTURE
from pipeline.precision import check_precision
from pipeline.surveys import get_survey

log = logging.getLogger(__name__)


class Stage:
    """Base class: one step of the cascade over NumPy batches (see module docstring).

    Args:
        batch_size: rows per batch handed to an actor.
        actors: actor-pool size: an int, or ``(min, max)`` to let Ray Data autoscale the pool;
            None picks from the cluster (see ``Pipeline``).
        num_cpus: CPUs reserved per actor (fractions allowed; None picks from the cluster).
        num_gpus: GPUs reserved per actor (fractions allowed; None: a share of a GPU for model
            stages when the cluster has GPUs, else 0).
    """

    name: ClassVar[str] = ""  # short name; names the provenance column (``model_<name>``)
    reads: ClassVar[tuple[str, ...]] = (schema.IMAGE,)  # columns compute() needs
    writes: ClassVar[tuple[str, ...]] = ()  # columns it adds or rewrites (for order checks)
    uses_model: ClassVar[bool] = False  # model stages get GPU shares by default

    def __init__(
        self,
        *,
        batch_size: int = 256,
        actors: int | tuple[int, int] | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        for label, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if value is not None and value < 0:
                raise ValueError(f"{type(self).__name__}: {label} must be >= 0, got {value}")
        if actors is not None:
            lo, hi = (actors, actors) if isinstance(actors, int) else actors
            if not 1 <= lo <= hi:
                raise ValueError(f"{type(self).__name__}: actors must be >= 1 (or 1 <= min <= max), got {actors}")
        self.batch_size = batch_size
        self.actors = actors
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        # Constructor keyword arguments that rebuild this stage inside an actor; subclasses add
        # theirs. Resources are not among them: they belong to the driver's scheduling.
        self.options: dict[str, Any] = {}
        self._ready = False
        self._template: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None

    # ------------------------------------------------------------------ the protocol
    def setup(self) -> None:
        """Load what the stage needs (a model); called once per actor, before the first batch."""

    def select(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean mask of the rows to compute on: rows read without error."""
        return schema.good_mask(batch)

    def compute(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """New columns for the selected ``rows`` (a writable batch holding only those rows)."""
        raise NotImplementedError

    def provenance(self) -> str | None:
        """Value of the ``model_<name>`` column on computed rows (None: no such column)."""
        return None

    # ------------------------------------------------------------------ shared machinery
    def __call__(self, batch: dict[str, np.ndarray], drop: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The batch with this stage's columns, minus the ``drop`` columns (``Pipeline.run``
        drops what no later step needs inside the last actor: no extra object-store hop)."""
        out = self._apply(batch)
        for name in drop:
            out.pop(name, None)
        return out

    def _apply(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._ready:
            self.setup()
            self._ready = True
        n = len(batch[schema.ID])
        batch = schema.restore_nulls(batch)  # a batch without errors may arrive as NaN
        mask = np.asarray(self.select(batch), dtype=bool)
        done = mask  # rows computed without an error (the provenance column's)
        out = dict(batch)
        if mask.any():
            # Boolean indexing copies, so compute() gets writable arrays even when Ray hands
            # over read-only zero-copy batches (torch.from_numpy needs writable memory).
            cols = self._computed({k: np.asarray(v)[mask] for k, v in batch.items()})
            failed = cols.pop(schema.ERROR, None)
            if failed is not None and any(e is not None for e in failed):
                rows = np.flatnonzero(mask)[[e is not None for e in failed]]
                errors = np.array(batch.get(schema.ERROR, np.full(n, None)), dtype=object)
                errors[rows] = [e for e in failed if e is not None]
                out[schema.ERROR] = errors
                if schema.ERROR_KIND in batch:  # a row the stage cannot take stays so
                    kinds = np.array(batch[schema.ERROR_KIND], dtype=object)
                    kinds[rows] = schema.PERMANENT
                    out[schema.ERROR_KIND] = kinds
                done = mask.copy()
                done[rows] = False
        else:
            cols = {}
            if self._template is None and not self._learn_template(batch):
                return out  # nothing to learn the columns from; no row is lost
        for name, (dtype, shape) in self._template.items():
            out[name] = self._place(batch.get(name), cols.get(name), mask, n, dtype, shape)
        tag = self.provenance()
        if tag is not None:
            prov = np.full(n, None, dtype=object)
            prov[done] = tag
            out[schema.provenance_column(self.name)] = prov
        return out

    def probe_row(self) -> dict[str, np.ndarray] | None:
        """One good row (a batch of one) that ``compute`` takes, to learn the output columns
        from when an actor's first batch has no row to compute (all error rows); None: learn
        them from that batch's first row, if ``compute`` takes it."""
        return None

    def _learn_template(self, batch: dict[str, np.ndarray]) -> bool:
        """Learn the output columns (once per actor) from :meth:`probe_row`, else from the
        batch's first row; False when neither works (the batch then passes without them)."""
        probe = self.probe_row()
        if probe is None:
            if len(batch[schema.ID]) == 0:
                return False
            probe = {k: np.array(np.asarray(v)[:1]) for k, v in batch.items()}
        try:
            self._computed(probe)
        except Exception:  # noqa: BLE001 - e.g. an error row's empty placeholder image
            log.debug("%s: no output columns learnt from an error row", type(self).__name__,
                      exc_info=True)
            return False
        return True

    def _computed(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``compute(rows)``, noting the shapes of its columns (an empty batch's template)."""
        cols = self.compute(rows)
        self._template = {k: (np.asarray(v).dtype, np.shape(v)[1:]) for k, v in cols.items()
                          if k != schema.ERROR}
        return cols

    @staticmethod
    def _place(existing, values, mask, n, dtype, shape) -> np.ndarray:
        """A full column: computed ``values`` on ``mask``; elsewhere the existing column's
        values (pass-through) or a null."""
        if existing is not None and np.shape(existing)[1:] == shape:
            full = np.array(existing, dtype=np.result_type(np.asarray(existing).dtype, dtype))
        elif dtype.kind == "b":
            full = np.zeros((n, *shape), dtype=bool)
        elif dtype.kind in "fc":
            full = np.full((n, *shape), np.nan, dtype=dtype)
        elif dtype.kind in "iu":  # integers have no null: widen to float so NaN can mark it
            dtype = np.dtype(np.float64)
            full = np.full((n, *shape), np.nan, dtype=dtype)
        else:
            full = np.full((n, *shape), None, dtype=object)
        if values is not None:
            full[mask] = values
        return full

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"{type(self).__name__}({opts})"


class ModelStage(Stage):
    """A stage that runs one of lensray's models (``pipeline.models``), or an ensemble of them,
    on the image column.

    Every row is first fitted to the checkpoint's geometry (``pipeline.models.fit_rows``: its
    bands picked by name, resampled from the row's ``pixel_scale`` to the model's, centre
    cropped/padded to its size); a row that cannot be becomes an error row saying what the
    model wants. Computed rows get ``resample_factor`` (native pixel scale / the model's) and
    ``survey``.

    **Checked on the driver.** Making the stage loads every checkpoint on the CPU
    (``pipeline.models.load_checkpoint``: config, network, weights, a dry run), so a bad one
    fails before any work with one line naming it; ``setup`` moves them to the device.

    **Ensembles.** Several checkpoints (a list) run as one stage: each actor holds every member,
    fits the rows once (the members must share bands, pixel scale and size) and writes the
    task's combination of the members' columns (``Task.combine``: the mean; for lens-detect
    also ``p_lens_std``, the std across members). The provenance column names every member.

    Args:
        checkpoint: checkpoint directory (``model.safetensors`` + ``config.json``), or a list
            of them (an ensemble); None uses the shipped weights of ``survey``
            (``pipeline.models.pretrained_dir``).
        survey: whose shipped weights to use and what to record in the ``survey`` column (a
            name in ``pipeline.surveys.SURVEYS``; None: the default survey, or nothing recorded
            for a checkpoint). A survey without weights for this stage is refused at once.
        device: "cpu", "cuda", "cuda:1"...; None picks at run time: CUDA when Ray gave the actor
            a GPU (or, outside Ray, when one is visible), else CPU.
        precision: "fp32" (default) or "bf16": autocast the network to bfloat16, faster where
            the hardware has it (the shipped networks' test metrics are unchanged, single scores
            can move; see docs/models.md). Recorded in the provenance column.
        band_aliases: file band -> model band, for bands that are the same under other names
            (``{"G": "VIS"}``): applied to the rows' band names and to ``--bands``.
        **resources: see :class:`Stage`.
    """

    task: ClassVar[str] = ""  # the task (``pipeline.models.tasks``) whose checkpoints it runs
    uses_model = True

    def __init__(self, checkpoint: str | Path | Sequence[str | Path] | None = None, *,
                 survey: str | None = None, device: str | None = None,
                 precision: str = "fp32", band_aliases: dict[str, str] | None = None,
                 **resources):
        from pipeline.models.checkpoint import (
            has_pretrained,
            no_pretrained,
            pretrained_dir,
            weights_tag,
        )

        super().__init__(**resources)
        members = _members(checkpoint, type(self).__name__)
        if members is None and not has_pretrained(self.task, survey):  # also checks the name
            raise FileNotFoundError(f"{type(self).__name__}: {no_pretrained(self.task, survey)}")
        check_precision(precision, type(self).__name__)
        self.checkpoints = [Path(m) for m in members] if members else [
            pretrained_dir(self.task, survey)]
        #: (model, config) of each member, loaded (and so checked) now, on the CPU
        self.members = [self._load(d) for d in self.checkpoints]
        configs = [c for _, c in self.members]
        #: each member's provenance name (``pipeline.models.checkpoint.weights_tag``)
        self.tags = [weights_tag(d, c) for d, c in zip(self.checkpoints, configs, strict=True)]
        self.config = configs[0]
        #: what the checkpoint takes: bands, pixel_scale, size (its config's)
        self.geometry = {k: configs[0][k] for k in ("bands", "pixel_scale", "size")}
        columns = tasks.get_task(self.task).columns(self.config)
        for d, c in zip(self.checkpoints[1:], configs[1:], strict=True):
            if {k: c[k] for k in self.geometry} != self.geometry:
                why = f"it takes {fit.takes(c)}"
            elif tasks.get_task(self.task).columns(c) != columns:
                why = f"it gives columns {', '.join(tasks.get_task(self.task).columns(c))}"
            elif c.get("denoiser_weights") != self.config.get("denoiser_weights"):
                why = f"it was trained on the output of denoiser {c.get('denoiser_weights')}"
            else:
                continue
            raise ValueError(f"{d}: ensemble members must share their input and columns: "
                             f"{why}, {self.checkpoints[0]} takes {fit.takes(self.config)}")
        #: the weights tag of the denoiser whose output the network was trained on (it then
        #: reads the denoise stage's column), or None: trained on raw cutouts
        self.denoiser = self.config.get("denoiser_weights")
        if self.denoiser:
            self.reads = (schema.DENOISED,)
        self.survey = get_survey(survey).name if survey or members is None else None
        self.options.update(checkpoint=members[0] if members and len(members) == 1 else members,
                            survey=survey, device=device, precision=precision)
        if band_aliases:  # only when given: resumed catalogues compare options
            self.options["band_aliases"] = dict(band_aliases)

    def _load(self, directory: Path) -> tuple:
        """(model, config) of a checkpoint, after every check of ``load_checkpoint`` and that
        it is for this stage's task and says its pixel scale."""
        from pipeline.models.checkpoint import CheckpointError, load_checkpoint

        model, config = load_checkpoint(directory, task=self.task)
        if config.get("pixel_scale") is None:
            raise CheckpointError(f"{directory}: config.json has no pixel_scale (arcsec/px of "
                                  "the images the model was trained on): add it, rows are "
                                  "resampled to it")
        return model, config

    def bands_problem(self, bands: Sequence[str] | None) -> str | None:
        """Why rows read with only ``bands`` cannot feed this stage ("<checkpoint>: ..."), or
        None (see ``pipeline.models.fit.bands_problem``)."""
        why = fit.bands_problem({**self.geometry, "task": self.task}, bands,
                             self.options.get("band_aliases"))
        return f"{self.checkpoints[0]}: {why}" if why else None

    def _pick_device(self) -> str:
        if self.options["device"]:
            return self.options["device"]
        import ray
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        return "cuda" if not in_actor or ray.get_gpu_ids() else "cpu"

    def setup(self) -> None:
        self.device = self._pick_device()
        self.members = [(m.to(self.device), c) for m, c in self.members]
        self.config = self.members[0][1]
        self._tag = "+".join(self.tags)
        if self.options["precision"] != "fp32":
            self._tag += f"+{self.options['precision']}"

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The task's columns for ``images`` already at the model's geometry (N, bands, size,
        size): the model's, or the ensemble's combination of its members' (``Task.combine``).
        Loads the models on first use."""
        from pipeline.models import predict

        if not self._ready:
            self.setup()
            self._ready = True
        cols = [predict(m, c, images, device=self.device, precision=self.options["precision"])
                for m, c in self.members]
        return cols[0] if len(cols) == 1 else tasks.get_task(self.task).combine(cols, self.config)

    def compute(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fit the rows to the model (error rows for those that cannot be), run it on the
        others (``predict``, in its own chunks: a Ray batch of any size is fine)."""
        if self.denoiser:  # the denoise stage's output, already at this model's geometry
            rows = {**rows, schema.IMAGE: rows[schema.DENOISED]}
        else:  # the raw cutout (IMAGE_SCALE describes the denoised column, not this one)
            rows = {k: v for k, v in rows.items() if k != schema.IMAGE_SCALE}
        fitted = fit.fit_rows(rows, self.config, self.survey, self.options.get("band_aliases"))
        ok = fitted.ok
        cols = self.predict(fitted.images[ok])
        n = len(ok)
        out = {k: self._place(None, v, ok, n, np.asarray(v).dtype, np.shape(v)[1:])
               for k, v in cols.items()}
        if schema.IMAGE in out:  # an image out (the denoiser's): later stages must know its scale
            out[schema.IMAGE_SCALE] = np.where(ok, float(self.config["pixel_scale"]), np.nan)
        out[schema.RESAMPLE] = np.where(ok, fitted.factor, np.nan)
        out[schema.SURVEY] = np.array([self.survey if k else None for k in ok], dtype=object)
        out[schema.ERROR] = fitted.errors
        return out

    def provenance(self) -> str:
        return self._tag

    def probe_row(self) -> dict[str, np.ndarray]:
        """A blank cutout of the checkpoint's own geometry (never an error row's placeholder,
        which may have no pixels: the model must not run on it)."""
        bands, size = self.config["bands"], int(self.config["size"])
        blank = np.zeros((1, len(bands), size, size), np.float32)
        return {schema.ID: np.array(["probe"], dtype=object), schema.IMAGE: blank,
                **({schema.DENOISED: blank} if self.denoiser else {}),
                schema.PIXEL_SCALE: np.array([float(self.config["pixel_scale"])]),
                schema.BAND_NAMES: np.array([",".join(bands)], dtype=object),
                schema.ERROR: np.array([None], dtype=object)}


def _members(checkpoint, who: str) -> list[str] | None:
    """Resolved checkpoint directories of a ``checkpoint`` argument (None: shipped weights)."""
    if checkpoint is None:
        return None
    items = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not items:
        raise ValueError(f"{who}: checkpoint is an empty list (give one or more directories)")
    members = [str(Path(c).expanduser().resolve()) for c in items]
    twice = sorted({m for m in members if members.count(m) > 1})
    if twice:
        raise ValueError(f"{twice[0]}: listed twice in one ensemble (each member once)")
    return members


def check_bands(stages: Sequence[Stage], bands: Sequence[str] | None) -> None:
    """Raise ValueError (one line, naming the checkpoint) for the first model stage that cannot
    take rows read with only ``bands`` (the user's ``--bands``; None: all bands)."""
    for stage in stages:
        why = stage.bands_problem(bands) if isinstance(stage, ModelStage) else None
        if why:
            raise ValueError(why)


class Denoise(ModelStage):
    """Write the denoiser's output to ``denoised`` (same units as the input, at the model's
    geometry: ``image_scale`` says its pixel scale; NaN on error rows). The raw ``image`` stays:
    the models after it read ``denoised`` only when they were trained on this denoiser's
    output (their config's ``denoiser_weights``, ``lensray train --denoiser``), else the raw
    cutout, so a denoise stage never feeds a model what it was not trained on."""

    name = task = DENOISE.name
    reads, writes = DENOISE.reads, (schema.DENOISED, schema.IMAGE_SCALE)

    def compute(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().compute(rows)
        out[schema.DENOISED] = out.pop(schema.IMAGE)
        return out


class LensDetect(ModelStage):
    """Score every good row with ``p_lens`` and flag candidates in ``is_candidate``.

    Args:
        threshold: rows with ``p_lens >= threshold`` are candidates.
        top_fraction: instead of a threshold, the top fraction of each batch's good rows by
            ``p_lens`` (ties broken by order). Streaming never sees the whole survey at once,
            so this is per batch: use large batches, or a threshold for exact global cuts.
        checkpoint, device, **resources: see :class:`ModelStage`.
    """

    name = task = LENS_DETECT.name
    reads, writes = LENS_DETECT.reads, (*LENS_DETECT.columns(), P_LENS_STD, CANDIDATE)

    def __init__(self, threshold: float | None = 0.5, *, top_fraction: float | None = None,
                 checkpoint: str | Path | None = None, device: str | None = None,
                 precision: str = "fp32", **resources):
        super().__init__(checkpoint, device=device, precision=precision, **resources)
        if top_fraction is not None:
            if not 0 < top_fraction <= 1:
                raise ValueError(f"LensDetect: top_fraction must be in (0, 1], got {top_fraction}")
            threshold = None
        elif threshold is None or not 0 <= threshold <= 1:
            raise ValueError(f"LensDetect: threshold must be in [0, 1], got {threshold}")
        self.options.update(threshold=threshold, top_fraction=top_fraction)

    def compute(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().compute(rows)
        p = out[P_LENS]
        scored = np.isfinite(p)  # rows that could not be fitted have none
        if self.options["top_fraction"] is None:
            candidate = scored & (np.where(scored, p, -np.inf) >= self.options["threshold"])
        else:
            k = math.ceil(self.options["top_fraction"] * scored.sum())
            candidate = np.zeros(len(p), dtype=bool)
            candidate[np.argsort(-np.where(scored, p, -np.inf), kind="stable")[:k]] = True
        out[CANDIDATE] = candidate
        return out


class Substructure(ModelStage):
    """Classify substructure (``p_no_sub``, ``p_cdm``, ``p_vortex``) and regress dark-matter
    parameters with uncertainties (``log10_m_axion`` ± ``log10_m_axion_sigma``, ``sigma_sub``
    ± ``sigma_sub_sigma``).

    After ``LensDetect`` it runs only on candidates (``is_candidate``); the other rows get NaN
    in these columns and a null ``model_substructure``. Without ``LensDetect`` it runs on every
    good row.
    """

    name = task = SUBSTRUCTURE.name
    reads, writes = SUBSTRUCTURE.reads, SUBSTRUCTURE.columns()

    def select(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        mask = super().select(batch)
        if CANDIDATE in batch:
            mask &= np.asarray(batch[CANDIDATE], dtype=bool)
        return mask


#: the cascade's stage class of each stage name (``pipeline.models.tasks.STAGES``)
STAGE_CLASSES: dict[str, type[ModelStage]] = {c.task: c for c in (Denoise, LensDetect, Substructure)}


def build_stages(
    stages: Sequence[str] | None = None,
    *,
    survey: str | None = None,
    checkpoints: dict[str, str | Path | None] | None = None,
    threshold: float = 0.5,
    top_fraction: float | None = None,
    batch_size: int = 256,
    precision: str = "fp32",
    band_aliases: dict[str, str] | None = None,
) -> list[ModelStage]:
    """Stage specs for the named stages, in order, with ``survey``'s shipped weights where
    ``checkpoints`` (stage name -> directory, or a list of them: an ensemble) gives none;
    validated now, so a bad checkpoint or a stage the survey ships no weights for fails before
    any work. ``band_aliases``: see :class:`ModelStage`.

    ``stages=None``: every stage (in cascade order) that the survey ships weights for or that
    ``checkpoints`` names; the others are left out with a log line saying so, and so is the
    shipped denoiser when no model after it was trained on its output (it would only cost
    time). Named ``stages`` without weights are an error naming the survey and the stage.
    """
    from pipeline.models.checkpoint import has_pretrained

    checkpoints = {k: v for k, v in (checkpoints or {}).items() if v}
    default = stages is None
    unknown = set(stages or ()) - set(STAGES) or set(checkpoints) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)} (known: {', '.join(STAGES)})")
    if stages is None:
        stages = [s for s in STAGES if s in checkpoints or has_pretrained(s, survey)]
        if not stages:
            raise FileNotFoundError(f"survey {get_survey(survey).name!r} ships no weights yet: "
                                    "pass checkpoints (lensray run --lens-detect-checkpoint DIR)")
        skipped = [s for s in STAGES if s not in stages]
        if skipped:
            log.warning("survey %s ships no %s weights: running %s only (pass --%s-checkpoint "
                        "DIR to add a stage)", get_survey(survey).name, ", ".join(skipped),
                        ", ".join(stages), skipped[0])
    options = {LensDetect: dict(threshold=threshold, top_fraction=top_fraction)}  # the cut
    built = [STAGE_CLASSES[name](checkpoint=checkpoints.get(name), survey=survey,
                                 batch_size=batch_size, precision=precision,
                                 band_aliases=band_aliases,
                                 **options.get(STAGE_CLASSES[name], {}))
             for name in stages]
    if default and not any(schema.DENOISED in s.reads for s in built):
        unread = [s for s in built if isinstance(s, Denoise) and DENOISE.name not in checkpoints]
        if unread and len(built) > 1:  # its output would go nowhere: no model was trained on it
            log.info("denoise left out: no later model was trained on its output (run it with "
                     "--stages denoise,...; docs/cascade.md)")
            built = [s for s in built if s not in unread]
    return built


__all__ = ["CANDIDATE", "STAGE_CLASSES", "Denoise", "LensDetect", "ModelStage", "Stage",
           "Substructure", "build_stages", "check_bands"]
