"""Checkpoints: ``model.safetensors`` (tensors only, never pickle) + ``config.json``.

The same directory is what training writes, what Ray Train reports, what a stage loads and
what ships in ``pipeline/weights/`` (where: :func:`pretrained_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.models.registry import create_model
from pipeline.models.tasks import STAGES
from pipeline.surveys import get_survey

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REQUIRED_KEYS = ("task", "model", "model_kwargs", "bands", "size", "normalization")

if TYPE_CHECKING:  # torch loads on first use: stage specs on a driver read configs only
    import torch.nn as nn


def save_checkpoint(model: nn.Module, config: dict, directory) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json``; returns the directory."""
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"task": config["task"],
                                                             "model": config["model"]})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint directory (or its ``model.safetensors``); returns ``(model, config)``
    with the model in eval mode on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" else path
    weights, cfg_file = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    for f in (weights, cfg_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: checkpoint file not found (a checkpoint is a directory "
                                    f"with {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"{cfg_file}: missing keys {missing}")
    model = create_model(config["model"], **config["model_kwargs"])
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not match model {config['model']!r}: {e}") from e
    return model.to(device).eval(), config


def weights_tag(directory: str | Path, config: dict) -> str:
    """``<model>@<lensray version that trained it>#<first 12 hex of the weights' sha256>``:
    the provenance name of a checkpoint (a directory or its safetensors file)."""
    from pipeline.io.files import sha256_file

    directory = Path(directory)
    weights = directory if directory.suffix == ".safetensors" else directory / WEIGHTS_FILE
    return f"{config['model']}@{config.get('lensray_version', 'unknown')}#{sha256_file(weights)[:12]}"


def checkpoint_dir(spec: str | Path, stage: str) -> Path:
    """A checkpoint directory from a path or ``survey:NAME`` (that survey's shipped ``stage``
    weights): how configs name a checkpoint without a machine path."""
    text = str(spec)
    if text.startswith("survey:"):
        survey = text.split(":", 1)[1]
        if not has_pretrained(stage, survey):
            raise FileNotFoundError(no_pretrained(stage, survey))
        return pretrained_dir(stage, survey)
    return Path(text).expanduser().resolve()


def pretrained_dir(stage: str, survey: str | None = None) -> Path:
    """Where the shipped weights of ``stage`` for ``survey`` (None: the default) are."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return WEIGHTS_DIR / get_survey(survey).weights / stage


def has_pretrained(stage: str, survey: str | None = None) -> bool:
    """Whether ``survey`` ships weights for ``stage``."""
    return (pretrained_dir(stage, survey) / WEIGHTS_FILE).is_file()


def no_pretrained(stage: str, survey: str | None = None) -> str:
    """The one-line reason why a stage of ``survey`` cannot run without a checkpoint."""
    shipped = [s for s in STAGES if has_pretrained(s, survey)]
    return (f"survey {get_survey(survey).name!r} ships no {stage} weights: pass a {stage} "
            f"checkpoint (lensray run --{stage}-checkpoint DIR; Python: checkpoint=DIR)"
            + (f" or leave the stage out (--stages {','.join(shipped)})" if shipped else ""))


def load_pretrained(stage: str, device="cpu", survey: str | None = None) -> tuple[nn.Module, dict]:
    """Load the shipped weights of ``stage`` (one of ``STAGES``) for ``survey`` (None: the
    default survey, see ``pipeline.surveys``)."""
    if not has_pretrained(stage, survey):
        raise FileNotFoundError(no_pretrained(stage, survey))
    return load_checkpoint(pretrained_dir(stage, survey), device)
