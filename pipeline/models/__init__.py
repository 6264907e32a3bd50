"""Networks, their registry, checkpoints and inference.

``create_model(name, **cfg)`` builds any registered network; ``save_checkpoint`` /
``load_checkpoint`` / ``load_pretrained`` move them to and from safetensors + JSON; ``predict``
turns survey images into catalogue columns with the normalisation stored in the config.
"""

from pipeline.models import cnn as _cnn  # noqa: F401  (registers models)
from pipeline.models import towers as _towers  # noqa: F401  (registers models)
from pipeline.models import unet as _unet  # noqa: F401  (registers models)
from pipeline.models.checkpoint import (
    STAGES,
    WEIGHTS_DIR,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from pipeline.models.inference import default_device, fit_cutouts, predict
from pipeline.models.normalize import DEFAULT_NORMALIZATION, denormalize, normalize
from pipeline.models.registry import create_model, list_models, register_model
from pipeline.models.tasks import TASKS, get_task

__all__ = [
    "DEFAULT_NORMALIZATION", "STAGES", "TASKS", "WEIGHTS_DIR", "create_model", "default_device",
    "denormalize", "fit_cutouts", "get_task", "list_models", "load_checkpoint", "load_pretrained",
    "normalize", "predict", "register_model", "save_checkpoint",
]
