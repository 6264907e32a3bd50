"""``Pipeline``: chain stages over a Ray Dataset, one actor pool per stage.

    cat = Pipeline([Denoise(), LensDetect(threshold=0.9), Substructure()]).run(ds)

Each stage becomes ``ds.map_batches(type(stage), fn_constructor_kwargs=stage.options,
batch_size=..., compute=ActorPoolStrategy(...), num_cpus=..., num_gpus=...)``: the model loads
once per actor and batches stream through the pools. Ray Data restarts an actor that dies and
retries its batches (its actor pools default to ``max_restarts=-1, max_task_retries=-1``), so a
lost actor costs time, not rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.io import schema
from pipeline.stages import Stage

BASE = frozenset(schema.BASE_COLUMNS)


def check_order(stages: Sequence[Stage]) -> None:
    """Raise ValueError if the stages cannot run in this order.

    A stage must find the columns it reads (base columns or written by an earlier stage); a
    stage must not rewrite a column an earlier stage already read without writing it (e.g.
    ``Denoise`` after ``LensDetect`` would leave the detector scoring raw images); and two
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
            raise ValueError(f"{label} reads {missing}, which no earlier stage writes")
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


class Pipeline:
    """An ordered list of stages, run over a Ray Dataset of cutout rows.

    Args:
        stages: Stage specs, e.g. ``[Denoise(), LensDetect(threshold=0.9), Substructure()]``;
            any subset in a sensible order (checked by :func:`check_order`), custom stages too.
    """

    def __init__(self, stages: Sequence[Stage]):
        self.stages = list(stages)
        check_order(self.stages)

    def __repr__(self) -> str:
        return f"Pipeline({self.stages!r})"

    def run(self, ds):
        """The dataset with every stage mapped over it (lazy: nothing runs until consumed)."""
        import ray

        resources = ray.cluster_resources()
        for stage in self.stages:
            ds = ds.map_batches(type(stage), **self.map_args(stage, resources))
        return ds

    def map_args(self, stage: Stage, cluster: dict[str, float]) -> dict[str, Any]:
        """Keyword arguments of ``map_batches`` for ``stage`` on a cluster with ``cluster``
        resources (``ray.cluster_resources()``). Defaults, where the stage leaves them open:

        - GPU cluster: model stages share each GPU (``num_gpus = 1 / #model stages``), one actor
          per GPU at most, autoscaled from one; 1 CPU per actor.
        - CPU only: fractional CPUs (a quarter of the cluster's CPUs split over the stages),
          which leaves room for the read tasks: on 2 CPUs, whole-CPU actors would take every
          CPU and Ray would wait forever. Pools autoscale from one actor up to the CPU count.
        """
        import ray

        cpus = max(1.0, float(cluster.get("CPU", 1)))
        gpus = float(cluster.get("GPU", 0))
        n_stages = len(self.stages)
        n_model = sum(s.uses_model for s in self.stages) or 1
        use_gpu = gpus > 0 and stage.uses_model and stage.num_gpus != 0
        num_gpus = stage.num_gpus if stage.num_gpus is not None else (
            round(1 / n_model, 3) if use_gpu else 0
        )
        if stage.num_cpus is not None:
            num_cpus = stage.num_cpus
        elif num_gpus:
            num_cpus = 1.0
        else:
            num_cpus = round(min(1.0, cpus / (4 * n_stages)), 3)
        if stage.actors is not None:
            lo, hi = (stage.actors, stage.actors) if isinstance(stage.actors, int) else stage.actors
        elif num_gpus:
            lo, hi = 1, max(1, int(gpus))
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
