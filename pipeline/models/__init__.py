"""Networks, their registry, the tasks, checkpoints and inference.

``create_model(name, **kwargs)`` builds any registered network and ``model_info(name)`` says what
lensray knows about it (its tasks, the stages it is the default for, its Tune search space, the
network that initialises it); ``TASKS``/``STAGES`` are the tasks and stage names;
``save_checkpoint`` / ``load_checkpoint`` / ``load_pretrained`` move networks to and from
safetensors + JSON (loading checks everything first: ``CheckpointError``, one line naming it); ``fit_rows`` fits observed cutouts to a checkpoint's bands, pixel scale and
size; ``predict`` turns survey images into catalogue columns with the normalisation stored in the
config.

Names load on first use (as in ``pipeline``): ``pipeline.models.tasks`` and
``pipeline.models.registry`` import no torch, so the CLI and the stage specs on a driver read the
vocabulary without loading a network.
"""

from importlib import import_module

# NumPy only; imported now so that ``normalize`` names the function, not its module
from pipeline.models.normalize import DEFAULT_NORMALIZATION, denormalize, normalize

# public name -> module that defines it
_LAZY = {
    "STAGES": "pipeline.models.tasks",
    "TASKS": "pipeline.models.tasks",
    "get_task": "pipeline.models.tasks",
    "create_model": "pipeline.models.registry",
    "default_model": "pipeline.models.registry",
    "list_models": "pipeline.models.registry",
    "model_info": "pipeline.models.registry",
    "model_kwargs": "pipeline.models.registry",
    "register_model": "pipeline.models.registry",
    "CheckpointError": "pipeline.models.checkpoint",
    "WEIGHTS_DIR": "pipeline.models.checkpoint",
    "load_checkpoint": "pipeline.models.checkpoint",
    "load_pretrained": "pipeline.models.checkpoint",
    "pretrained_dir": "pipeline.models.checkpoint",
    "save_checkpoint": "pipeline.models.checkpoint",
    "default_device": "pipeline.models.inference",
    "fit_cutouts": "pipeline.models.fit",
    "fit_rows": "pipeline.models.fit",
    "has_pretrained": "pipeline.models.checkpoint",
    "predict": "pipeline.models.inference",
}

__all__ = ["DEFAULT_NORMALIZATION", "denormalize", "normalize", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
