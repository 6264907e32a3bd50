"""One door to every network: ``create_model(name, **cfg)`` (timm style).

Each architecture registers a factory with ``@register_model(task=...)``. Networks are
task-agnostic about the meaning of their outputs: a classifier/regressor takes ``in_channels``
(bands) and ``num_outputs`` (the task says how many and what they mean, see ``tasks.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {}


def register_model(*tasks: str) -> Callable:
    """Register a factory under its function name for the given tasks."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = (fn, tasks)
        return fn

    return deco


def create_model(name: str, **cfg) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``cfg``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (available: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name][0](**cfg)


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those suited to ``task``."""
    return sorted(n for n, (_, tasks) in _REGISTRY.items() if task is None or task in tasks)
