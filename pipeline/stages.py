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

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.io import schema
from pipeline.io.schema import CANDIDATE
from pipeline.models.tasks import DENOISE, LENS_DETECT, P_LENS, STAGES, SUBSTRUCTURE
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
    """A stage that runs one of lensray's models (``pipeline.models``) on the image column.

    Every row is first fitted to the checkpoint's geometry (``pipeline.models.fit_rows``: its
    bands picked by name, resampled from the row's ``pixel_scale`` to the model's, centre
    cropped/padded to its size); a row that cannot be becomes an error row saying what the
    model wants. Computed rows get ``resample_factor`` (native pixel scale / the model's) and
    ``survey``.

    Args:
        checkpoint: checkpoint directory (``model.safetensors`` + ``config.json``); None uses
            the shipped weights of ``survey`` (``pipeline.models.pretrained_dir``).
        survey: whose shipped weights to use and what to record in the ``survey`` column (a
            name in ``pipeline.surveys.SURVEYS``; None: the default survey, or nothing recorded
            for a checkpoint). A survey without weights for this stage is refused at once.
        device: "cpu", "cuda", "cuda:1"...; None picks at run time: CUDA when Ray gave the actor
            a GPU (or, outside Ray, when one is visible), else CPU.
        precision: "fp32" (default) or "bf16": autocast the network to bfloat16, faster where
            the hardware has it (the shipped networks' test metrics are unchanged, single scores
            can move; see docs/models.md). Recorded in the provenance column.
        **resources: see :class:`Stage`.
    """

    task: ClassVar[str] = ""  # the task (``pipeline.models.tasks``) whose checkpoints it runs
    uses_model = True

    def __init__(self, checkpoint: str | Path | None = None, *, survey: str | None = None,
                 device: str | None = None, precision: str = "fp32", **resources):
        from pipeline.models.checkpoint import has_pretrained, no_pretrained, pretrained_dir

        super().__init__(**resources)
        if checkpoint is not None:
            checkpoint = str(Path(checkpoint).expanduser().resolve())
            config = self._check_checkpoint(Path(checkpoint))
        elif not has_pretrained(self.task, survey):  # also checks the survey's name
            raise FileNotFoundError(f"{type(self).__name__}: {no_pretrained(self.task, survey)}")
        else:
            config = self._check_checkpoint(pretrained_dir(self.task, survey))
        check_precision(precision, type(self).__name__)
        #: what the checkpoint takes: bands, pixel_scale, size (its config's)
        self.geometry = {k: config.get(k) for k in ("bands", "pixel_scale", "size")}
        self.survey = get_survey(survey).name if survey or checkpoint is None else None
        self.options.update(checkpoint=checkpoint, survey=survey, device=device,
                            precision=precision)
        self.model = self.config = None

    def _check_checkpoint(self, directory: Path) -> dict:
        """The checkpoint's config; fails on the driver, before any work, if the checkpoint is
        missing, for another task or without a pixel scale."""
        cfg_file = directory / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{directory}: not a checkpoint ({cfg_file.name} not found; a checkpoint is a "
                "directory with model.safetensors and config.json)"
            )
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
        if config.get("task") != self.task:
            raise ValueError(
                f"{directory}: checkpoint is for task {config.get('task')!r}, but "
                f"{type(self).__name__} needs a {self.task!r} checkpoint"
            )
        if not isinstance(config.get("pixel_scale"), (int, float)):
            raise ValueError(f"{cfg_file}: no pixel_scale (arcsec/px of the images the model "
                             "was trained on): add it, rows are resampled to it")
        return config

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
        from pipeline.models import load_checkpoint, load_pretrained

        self.device = self._pick_device()
        ckpt = self.options["checkpoint"]
        if ckpt is None:
            self.model, self.config = load_pretrained(self.task, device=self.device,
                                                      survey=self.options["survey"])
        else:
            self.model, self.config = load_checkpoint(ckpt, device=self.device)
        self._tag = _model_tag(self.config, ckpt, self.task, self.options["survey"])
        if self.options["precision"] != "fp32":
            self._tag += f"+{self.options['precision']}"

    def compute(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fit the rows to the model (error rows for those that cannot be), run it on the
        others (``predict``, in its own chunks: a Ray batch of any size is fine)."""
        from pipeline.models import fit_rows, predict

        fit = fit_rows(rows, self.config, self.survey)
        ok = fit.ok
        cols = predict(self.model, self.config, fit.images[ok], device=self.device,
                       precision=self.options["precision"])
        n = len(ok)
        out = {k: self._place(None, v, ok, n, np.asarray(v).dtype, np.shape(v)[1:])
               for k, v in cols.items()}
        if schema.IMAGE in out:  # the image is now the model's: later stages must know
            out[schema.IMAGE_SCALE] = np.where(ok, float(self.config["pixel_scale"]), np.nan)
        out[schema.RESAMPLE] = np.where(ok, fit.factor, np.nan)
        out[schema.SURVEY] = np.array([self.survey if k else None for k in ok], dtype=object)
        out[schema.ERROR] = fit.errors
        return out

    def provenance(self) -> str:
        return self._tag

    def probe_row(self) -> dict[str, np.ndarray]:
        """A blank cutout of the checkpoint's own geometry (never an error row's placeholder,
        which may have no pixels: the model must not run on it)."""
        bands, size = self.config["bands"], int(self.config["size"])
        return {schema.ID: np.array(["probe"], dtype=object),
                schema.IMAGE: np.zeros((1, len(bands), size, size), np.float32),
                schema.PIXEL_SCALE: np.array([float(self.config["pixel_scale"])]),
                schema.BAND_NAMES: np.array([",".join(bands)], dtype=object),
                schema.ERROR: np.array([None], dtype=object)}


def _model_tag(config: dict, checkpoint: str | None, task: str, survey: str | None) -> str:
    """``<model>@<lensray version that trained it>#<first 12 hex of the weights' sha256>``."""
    from pipeline.io.files import sha256_file
    from pipeline.models.checkpoint import WEIGHTS_FILE, pretrained_dir

    directory = Path(checkpoint) if checkpoint else pretrained_dir(task, survey)
    weights = directory if directory.suffix == ".safetensors" else directory / WEIGHTS_FILE
    return f"{config['model']}@{config.get('lensray_version', 'unknown')}#{sha256_file(weights)[:12]}"


class Denoise(ModelStage):
    """Replace ``image`` by the denoiser's output (same units as the input, at the model's
    geometry: ``image_scale`` says its pixel scale), so the stages after it see denoised
    cutouts; they must take the same geometry (``Pipeline`` checks). Error rows get a NaN
    image."""

    name = task = DENOISE.name
    reads, writes = DENOISE.reads, DENOISE.columns()


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
    reads, writes = LENS_DETECT.reads, (*LENS_DETECT.columns(), CANDIDATE)

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
) -> list[ModelStage]:
    """Stage specs for the named stages, in order, with ``survey``'s shipped weights where
    ``checkpoints`` (stage name -> directory) gives none; validated now, so a bad checkpoint or
    a stage the survey ships no weights for fails before any work.

    ``stages=None``: every stage (in cascade order) that the survey ships weights for or that
    ``checkpoints`` names; the others are left out with a log line saying so. Named ``stages``
    without weights are an error naming the survey and the stage.
    """
    from pipeline.models.checkpoint import has_pretrained

    checkpoints = {k: v for k, v in (checkpoints or {}).items() if v}
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
    return [STAGE_CLASSES[name](checkpoint=checkpoints.get(name), survey=survey,
                                batch_size=batch_size, precision=precision,
                                **options.get(STAGE_CLASSES[name], {}))
            for name in stages]


__all__ = ["CANDIDATE", "STAGE_CLASSES", "Denoise", "LensDetect", "ModelStage", "Stage",
           "Substructure", "build_stages"]
