"""One door to every network, ``create_model(name, **kwargs)``, and what lensray knows about
each network, attached where it registers (as timm attaches its default configs)::

    @register_model("lens-detect", "substructure", default_for=("lens-detect",),
                    search_space={"model.dropout": ("uniform", 0.0, 0.3)})
    def my_resnet(**kwargs) -> nn.Module: ...

Networks are task-agnostic about the meaning of their outputs: a classifier/regressor takes
``in_channels`` (bands) and ``num_outputs``; the task says how many and what they mean
(``tasks.py``). This module imports no torch: the built-in networks register on first look-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

BUILTIN = ("pipeline.models.cnn", "pipeline.models.lenslight", "pipeline.models.unet",
           "pipeline.models.towers")


@dataclass(frozen=True)
class ModelInfo:
    """A registered network and its facts.

    Attributes:
        name: the registered name (the factory's function name).
        build: the factory, ``build(**kwargs) -> nn.Module``.
        tasks: the tasks it serves.
        default_for: stages whose network it is when none is named (``lensray train --stage``).
        search_space: its Ray Tune search space as plain data, ``{"model.<arg>" or recipe key:
            (distribution, *args)}`` with a distribution of ``ray.tune`` (``"choice"``,
            ``"uniform"``, ``"loguniform"``, ...); ``pipeline.train.tune`` builds it.
        init_from: for a network built from another network's trained checkpoint:
            ``init_from(kwargs) -> (network, network_kwargs)`` of that checkpoint. Such a model
            needs one to start (``--init``), loads it with its ``init_from(state)`` method, and
            keeps that checkpoint's target standardisation (its frozen heads were trained on it).
        task_kwargs: constructor arguments it needs from a task's config beyond the task's own
            (``task_kwargs(config) -> dict``).
    """

    name: str
    build: Callable[..., Any]
    tasks: tuple[str, ...]
    default_for: tuple[str, ...] = ()
    search_space: Mapping[str, tuple] = field(default_factory=dict)
    init_from: Callable[[dict], tuple[str, dict]] | None = None
    task_kwargs: Callable[[dict], dict] | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(*tasks: str, default_for: tuple[str, ...] = (), search_space=None,
                   init_from=None, task_kwargs=None) -> Callable:
    """Register a factory under its function name for ``tasks``, with its facts (:class:`ModelInfo`)."""
    from pipeline.models.tasks import TASKS

    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise ValueError(f"register_model: tasks {sorted(unknown) or '()'} (known: {', '.join(TASKS)})")
    bad = set(default_for) - set(tasks)
    if bad:
        raise ValueError(f"default_for {sorted(bad)} is not among the model's tasks {tasks}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, fn, tuple(tasks), tuple(default_for),
                                           dict(search_space or {}), init_from, task_kwargs)
        return fn

    return deco


def _registry() -> dict[str, ModelInfo]:
    for module in BUILTIN:  # imported once; registering is the import's side effect
        import_module(module)
    return _REGISTRY


def model_info(name: str) -> ModelInfo:
    """The facts of the registered model ``name``."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(sorted(registry))})")
    return registry[name]


def create_model(name: str, **kwargs):
    """Build the registered model ``name`` with keyword arguments ``kwargs``."""
    return model_info(name).build(**kwargs)


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those suited to ``task``."""
    return sorted(n for n, info in _registry().items() if task is None or task in info.tasks)


def default_model(stage: str) -> str:
    """The network a stage trains when none is named (registered with ``default_for``)."""
    names = [n for n, info in _registry().items() if stage in info.default_for]
    if len(names) != 1:
        raise ValueError(f"stage {stage!r} has {len(names)} default networks {names} (want one)")
    return names[0]


def model_kwargs(model: str, config: dict, **overrides) -> dict:
    """Constructor arguments of ``model`` for a checkpoint ``config``: what its task implies
    (bands in, outputs out), what the model itself needs from the config, then ``overrides``."""
    from pipeline.models.tasks import get_task

    info = model_info(model)
    kwargs = get_task(config["task"]).model_kwargs(config)
    if info.task_kwargs is not None:
        kwargs.update(info.task_kwargs(config))
    return {**kwargs, **overrides}


def init_network(model: str, kwargs: dict) -> tuple[str, dict]:
    """(network, kwargs) of the checkpoint that can start ``model`` built with ``kwargs``: the
    model itself (fine-tuning), or the network it is built from (:attr:`ModelInfo.init_from`)."""
    info = model_info(model)
    return info.init_from(kwargs) if info.init_from else (model, kwargs)
