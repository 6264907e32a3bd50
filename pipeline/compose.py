"""``Pipeline``: chain stages over a Ray Dataset, one actor pool per stage.

    cat = Pipeline([Denoise(), LensDetect(threshold=0.9), Substructure()]).run(ds)

Each stage becomes ``ds.map_batches(type(stage), fn_constructor_kwargs=stage.options,
batch_size=..., compute=ActorPoolStrategy(...), num_cpus=..., num_gpus=...)``: the model loads
once per actor and batches stream through the pools.

On a cluster without GPUs, consecutive stages that leave their resources open are *fused*: one
:class:`Chain` actor holds all their models and passes each batch from one to the next in
memory. Separate pools only pay off when stages need different hardware (a GPU share each);
on CPUs they cost an object-store hop and an Arrow conversion per stage and split the cores
into pools that wait on each other. ``Pipeline(..., fuse=False)`` keeps one pool per stage.

:meth:`Pipeline.run_files` goes one step further when everything fuses into one CPU pool: the
dataset holds only file names and each :class:`ReadChain` actor reads its own files, so no read
task competes with the models for the cores and no image ever enters the object store.

Ray Data restarts an actor that dies and
retries its batches (its actor pools default to ``max_restarts=-1, max_task_retries=-1``), so a
lost actor costs time, not rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.io import schema
from pipeline.stages import Stage

BASE = frozenset(schema.BASE_COLUMNS)
log = logging.getLogger(__name__)


def check_order(stages: Sequence[Stage]) -> None:
    """Raise ValueError if the stages cannot run in this order.

    A stage must find the columns it reads (base columns or written by an earlier stage: a
    model trained on a denoiser's output reads ``denoised``); a stage must not rewrite a column
    an earlier stage already read without writing it (e.g. ``Denoise`` after such a model
    would leave it without its input); and two
    stages must not write the same column unless the later one reads it (a chain).
    """
    if not stages:
        raise ValueError("Pipeline needs at least one stage")
    available = set(BASE)
    read_by: dict[str, str] = {}  # column -> first stage that read it without writing it
    written_by: dict[str, str] = {}
    for stage in stages:
        if not isinstance(stage, Stage):
            raise TypeError(
                f"Pipeline stages must be pipeline.stages.Stage instances, got {stage!r} "
                "(subclass Stage to add your own; see docs/cascade.md)"
            )
        label = type(stage).__name__
        missing = [c for c in stage.reads if c not in available]
        if missing:
            hint = (": its checkpoint was trained on a denoiser's output, put a denoise stage "
                    "before it" if schema.DENOISED in missing else "")
            raise ValueError(f"{label} reads {missing}, which no earlier stage writes{hint}")
        for col in stage.writes:
            if col in read_by:
                raise ValueError(
                    f"{label} rewrites {col!r} after {read_by[col]} read it; "
                    f"put {label} before {read_by[col]}"
                )
            if col in written_by and col not in stage.reads:
                raise ValueError(f"{label} and {written_by[col]} both write {col!r}")
        for col in stage.reads:
            if col not in stage.writes:
                read_by.setdefault(col, label)
        for col in stage.writes:
            written_by[col] = label
        available.update(stage.writes)


def check_geometry(stages: Sequence[Stage]) -> None:
    """Raise ValueError if a model stage reads the denoised image at another geometry than the
    denoiser before it makes (its output is at its own bands, pixel scale and size); warn when
    that denoiser is not the one the model was trained on."""
    made = None  # (stage, geometry) that last wrote the denoised image
    for stage in stages:
        geometry = getattr(stage, "geometry", None)
        if geometry and made and schema.DENOISED in stage.reads:
            if not _same(geometry, made[1]):
                raise ValueError(f"{type(stage).__name__} takes {_describe(geometry)}, but "
                                 f"{type(made[0]).__name__} before it makes "
                                 f"{_describe(made[1])}: give them checkpoints of one geometry")
            tag = "+".join(getattr(made[0], "tags", []))
            if getattr(stage, "denoiser", None) not in (None, tag):
                log.warning("%s was trained on the output of denoiser %s, but runs after %s",
                            type(stage).__name__, stage.denoiser, tag)
        if schema.DENOISED in stage.writes:
            made = (stage, geometry) if geometry else None


def _same(a: dict, b: dict) -> bool:
    return ([x.lower() for x in a["bands"]] == [x.lower() for x in b["bands"]]
            and a["size"] == b["size"] and abs(a["pixel_scale"] / b["pixel_scale"] - 1) <= 1e-3)


def _describe(g: dict) -> str:
    return f"bands {','.join(g['bands'])} at {g['pixel_scale']:.4g}\"/px, {g['size']} px"


class Pipeline:
    """An ordered list of stages, run over a Ray Dataset of cutout rows.

    Args:
        stages: Stage specs, e.g. ``[Denoise(), LensDetect(threshold=0.9), Substructure()]``;
            any subset in a sensible order (checked by :func:`check_order` and
            :func:`check_geometry`), custom stages too.
    """

    def __init__(self, stages: Sequence[Stage], *, fuse: bool | None = None,
                 gpus: float | None = None):
        """``gpus``: plan the pools for this many GPUs instead of the ones the cluster has when
        the run starts. On an autoscaling cluster whose GPU workers start at zero, the model
        actors then request GPU shares and the autoscaler adds GPU nodes for them; on a
        cluster that can never provide them, the run waits for them."""
        if gpus is not None and not gpus >= 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        self.stages = list(stages)
        self.fuse = fuse
        self.gpus = gpus
        check_order(self.stages)
        check_geometry(self.stages)

    @classmethod
    def for_survey(cls, survey: str, stages: Sequence[str] | None = None, *,
                   fuse: bool | None = None, **options) -> Pipeline:
        """The cascade of ``survey``'s shipped models (``pipeline.surveys``): by default every
        stage it ships weights for, e.g. ``Pipeline.for_survey("ground-gri")``; ``options``
        as :func:`pipeline.stages.build_stages` takes them (``checkpoints=``, ``threshold=``...).
        """
        from pipeline.stages import build_stages

        return cls(build_stages(stages, survey=survey, **options), fuse=fuse)

    def __repr__(self) -> str:
        return f"Pipeline({self.stages!r})"

    def resources(self) -> dict[str, float]:
        """The resources the pools are planned for: the cluster's now (a local Ray started if
        none is), GPUs as ``gpus`` says."""
        from pipeline._ray import ensure_ray

        resources = dict(ensure_ray().cluster_resources())
        if self.gpus is not None:
            resources["GPU"] = float(self.gpus)
        return resources

    def run(self, ds, *, drop: Sequence[str] = ()):
        """The dataset with every stage mapped over it (lazy: nothing runs until consumed).

        ``drop``: columns to leave out of the output (e.g. the image, which no step after the
        pipeline needs). The last pool drops them itself, so the images never make the extra
        object-store round trip that a separate ``ds.drop_columns`` would cost.
        """

        resources = self.resources()
        groups = self.groups(resources)
        for i, group in enumerate(groups):
            stage = group[0] if len(group) == 1 else Chain(group)
            args = self.map_args(stage, resources)
            if i == len(groups) - 1 and drop:
                args["fn_kwargs"] = {"drop": list(drop)}
            ds = ds.map_batches(type(stage), **args)
        return ds

    def run_files(
        self,
        paths,
        *,
        bands: Sequence[str] | None = None,
        size: int | None = None,
        pixel_scale: float | None = None,
        band_names: Sequence[str] | None = None,
        strict: bool = False,
        attempts: int = 3,
        drop: Sequence[str] = (),
    ):
        """The stages over the cutouts of FITS ``paths`` (files, directories, globs, URIs, or
        the :class:`~pipeline.io.Inputs` already listed), as ``run(read_cutouts(paths, bands,
        size, geometry=True, pixel_scale=pixel_scale, band_names=band_names, strict=strict),
        drop=drop)`` gives them, in the same order (lazy too). The rows carry their pixel scale
        and band names, so each model stage fits them to its checkpoint; ``bands`` and ``size``
        only narrow what is read (native pixels), ``pixel_scale`` overrides every file's,
        ``band_names`` names the planes of files that name none, ``attempts`` is the tries of
        a read that fails transiently.

        When all stages fuse into one CPU pool, the pool's :class:`ReadChain` actors read the
        files themselves; otherwise (GPU pools, ``fuse=False``, stages with their own
        resources) Ray Data's read tasks feed the pools.
        """
        from pipeline._ray import ensure_ray
        from pipeline.io import ReadOptions, list_inputs, read_cutouts
        from pipeline.io.files import group_files
        from pipeline.stages import check_bands

        check_bands(self.stages, bands)  # a read the models cannot take fails before any work
        inputs = list_inputs(paths)
        ray = ensure_ray()  # as ``run_cascade`` and ``lensray run`` start it (a local Ray)
        resources = self.resources()
        options = ReadOptions(bands=tuple(bands) if bands is not None else None, size=size,
                              strict=strict, geometry=True, pixel_scale=pixel_scale,
                              band_names=tuple(band_names) if band_names else None,
                              attempts=attempts)
        if not self.reads_in_actors(resources):
            return self.run(read_cutouts(inputs, bands, size, strict=strict, geometry=True,
                                         pixel_scale=pixel_scale, band_names=band_names,
                                         attempts=attempts),
                            drop=drop)
        args = self.map_args(ReadChain(self.stages, read=options), resources)
        args["fn_constructor_kwargs"]["filesystem"] = inputs.filesystem
        args["batch_size"] = 1  # one group of files per call
        # A few groups per CPU: every actor gets work and the last group is a short wait.
        work = group_files(inputs, parts=4 * max(1, int(resources.get("CPU", 1))))
        if args["compute"].min_size > len(work):  # no more actors than groups to give them
            args["compute"] = ray.data.ActorPoolStrategy(size=len(work))
        ds = ray.data.from_items([{"paths": g} for g in work], override_num_blocks=len(work))
        return ds.map_batches(ReadChain, fn_kwargs={"drop": list(drop)}, **args)

    def reads_in_actors(self, cluster: dict[str, float]) -> bool:
        """Whether :meth:`run_files` lets the actors read: every stage leaves its resources
        open and fusion is on, so all share one pool, and that pool gets no GPU (as
        :meth:`map_args` gives one to any pool with a model on a GPU cluster)."""
        on_gpu = cluster.get("GPU", 0) > 0 and any(s.uses_model for s in self.stages)
        return self._fuses(cluster) and all(map(_open, self.stages)) and not on_gpu

    def _fuses(self, cluster: dict[str, float]) -> bool:
        return self.fuse if self.fuse is not None else not cluster.get("GPU", 0)

    def groups(self, cluster: dict[str, float]) -> list[list[Stage]]:
        """The stages in runs that share one actor pool: consecutive stages with open resources
        are fused when ``fuse`` is True, or (``fuse=None``) when the cluster has no GPU."""
        fuse = self._fuses(cluster)
        out: list[list[Stage]] = []
        for stage in self.stages:
            if fuse and out and _open(stage) and _open(out[-1][-1]):
                out[-1].append(stage)
            else:
                out.append([stage])
        return out

    def map_args(self, stage: Stage, cluster: dict[str, float]) -> dict[str, Any]:
        """Keyword arguments of ``map_batches`` for ``stage`` on a cluster with ``cluster``
        resources (``ray.cluster_resources()``). Defaults, where the stage leaves them open:

        - GPU cluster: model pools share each GPU (``num_gpus = 1 / #model pools``), one actor
          per GPU at most, autoscaled from one; 1 CPU per actor.
        - CPU only, fused :class:`Chain`: one single-threaded actor per CPU from the start, each
          reserving half a CPU so the read tasks keep the other half (Ray Data's autoscaler
          kept a single actor: half the machine idle; docs/cascade.md); a
          :class:`ReadChain` does its own reads, so it reserves a whole CPU.
        - CPU only, separate pools: fractional CPUs (a quarter of the cluster's CPUs split over
          the pools), autoscaled from one actor up to the CPU count. Whole-CPU actors on 2 CPUs
          would take every CPU and Ray would wait forever for the reads.
        """
        import ray

        cpus = max(1.0, float(cluster.get("CPU", 1)))
        gpus = float(cluster.get("GPU", 0))
        pools = self.groups(cluster)
        n_model = sum(any(s.uses_model for s in pool) for pool in pools) or 1
        use_gpu = gpus > 0 and stage.uses_model and stage.num_gpus != 0
        num_gpus = stage.num_gpus if stage.num_gpus is not None else (
            round(1 / n_model, 3) if use_gpu else 0
        )
        fused_cpu = isinstance(stage, Chain) and not num_gpus
        if stage.num_cpus is not None:
            num_cpus = stage.num_cpus
        elif num_gpus:
            num_cpus = 1.0
        elif fused_cpu:  # one actor per CPU at half a CPU each: half the CPUs stay for reads
            num_cpus = 1.0 if isinstance(stage, ReadChain) else 0.5
        else:
            num_cpus = round(min(1.0, cpus / (4 * len(pools))), 3)
        if stage.actors is not None:
            lo, hi = (stage.actors, stage.actors) if isinstance(stage.actors, int) else stage.actors
        elif num_gpus:
            lo, hi = 1, max(1, int(gpus))
        elif fused_cpu:
            lo = hi = max(1, int(cpus))
        else:
            lo, hi = 1, max(1, int(cpus))
        args: dict[str, Any] = dict(
            fn_constructor_kwargs=dict(stage.options),
            batch_size=stage.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
            num_cpus=num_cpus,
        )
        if num_gpus:
            args["num_gpus"] = num_gpus
        return args


def _open(stage: Stage) -> bool:
    """A stage that leaves its resources to the Pipeline (so it may share an actor)."""
    return stage.actors is None and stage.num_cpus is None and stage.num_gpus is None


class Chain(Stage):
    """Several stages in one actor: each batch goes through them in order, in memory.

    Built by :meth:`Pipeline.run` from stage specs; inside the actor Ray rebuilds it from
    ``stages`` (a list of (class, options)) and each stage loads its model on the first batch.
    """

    def __init__(self, stages: Sequence[Stage] | Sequence[tuple[type, dict]]):
        specs = [(type(s), dict(s.options)) if isinstance(s, Stage) else tuple(s) for s in stages]
        sizes = [s.batch_size for s in stages if isinstance(s, Stage)]
        super().__init__(batch_size=max(sizes, default=256))  # only the driver's copy uses it
        self.members = [cls(**opts) for cls, opts in specs]
        self.uses_model = any(m.uses_model for m in self.members)
        self.options = {"stages": specs}

    def _apply(self, batch: dict) -> dict:
        for member in self.members:
            batch = member(batch)
        return batch

    def __repr__(self) -> str:
        return f"Chain({self.members!r})"


class ReadChain(Chain):
    """A :class:`Chain` that reads its own input: each call gets a group of FITS file names,
    reads them (:func:`pipeline.io.read_fits_file`), runs the stages over their rows in slices
    of the largest stage batch size (small files share slices) and yields the rows without
    the ``drop`` columns, in file order.

    Built by :meth:`Pipeline.run_files`.
    """

    def __init__(self, stages, *, read, filesystem=None, rows: int | None = None):
        super().__init__(stages)
        self.read, self.filesystem = read, filesystem
        self.rows = rows or self.batch_size  # the driver's copy knows the stages' batch sizes
        self.options = {**self.options, "read": read, "filesystem": filesystem, "rows": self.rows}

    def __call__(self, batch: dict, drop: Sequence[str] = ()):
        import numpy as np

        from pipeline.io import read_fits_file
        from pipeline.io.reader import merge_batches

        for paths in batch["paths"]:
            files = (read_fits_file(str(p), self.read, self.filesystem) for p in paths)
            for rows in merge_batches(files):
                parts = []
                for i in range(0, len(rows[schema.ID]), self.rows):
                    part = {k: v[i:i + self.rows] for k, v in rows.items()}
                    parts.append(super().__call__(part, drop))
                if parts:
                    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
