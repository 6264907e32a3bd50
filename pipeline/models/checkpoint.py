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


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is "<checkpoint>: <problem>"."""


def checkpoint_dir(path) -> Path:
    """The checkpoint directory of ``path`` (the directory itself or its ``model.safetensors``)."""
    path = Path(path)
    return path.parent if path.suffix == ".safetensors" else path


def read_config(path) -> dict:
    """The ``config.json`` of the checkpoint at ``path``, checked: both files exist, the JSON
    holds every :data:`REQUIRED_KEYS` with a usable value, and names a known task, network and
    normalisation (no torch needed).

    Raises:
        FileNotFoundError: a file is missing. CheckpointError: anything else, one line.
    """
    from pipeline.models.normalize import check_normalization
    from pipeline.models.registry import model_info
    from pipeline.models.tasks import get_task

    directory = checkpoint_dir(path)
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: {' and '.join(missing)} not found (a checkpoint "
                                f"is a directory with {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory}: {CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory}: {CONFIG_FILE} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{directory}: {CONFIG_FILE} lacks {', '.join(missing)}")
    bands, size, scale = config["bands"], config["size"], config.get("pixel_scale")
    problems = {
        "bands": not (isinstance(bands, list) and bands
                      and all(isinstance(b, str) and b.strip() for b in bands)),
        "size": isinstance(size, bool) or not isinstance(size, int) or size < 1,
        "pixel_scale": scale is not None and (isinstance(scale, bool) or not isinstance(
            scale, (int, float)) or not scale > 0),
        "model_kwargs": not isinstance(config["model_kwargs"], dict),
    }
    bad = [k for k, wrong in problems.items() if wrong]
    if bad:
        want = {"bands": "a list of band names", "size": "pixels, an integer >= 1",
                "pixel_scale": "arcsec/px, a number > 0", "model_kwargs": "an object"}
        raise CheckpointError(f"{directory}: {CONFIG_FILE} has " + "; ".join(
            f"{k} {config.get(k)!r} (want {want[k]})" for k in bad))
    try:
        get_task(config["task"])
        info = model_info(config["model"])
        check_normalization(config["normalization"])
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None
    if config["task"] not in info.tasks:
        raise CheckpointError(f"{directory}: model {config['model']!r} does not serve task "
                              f"{config['task']!r} (it serves {', '.join(info.tasks)})")
    return config


def load_checkpoint(path, device="cpu", task: str | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint directory (or its ``model.safetensors``); returns ``(model, config)``
    with the model in eval mode on ``device``. ``task``: the task it must be for.

    Everything is checked before the model is returned, each problem one line naming the
    checkpoint (:class:`CheckpointError`, a ValueError): the config (:func:`read_config`), that
    ``model_kwargs`` build the network, that the weights are a readable safetensors file
    (never pickle) whose names and shapes are the network's, and that the network takes the
    config's input (bands x size x size) and gives the task's outputs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = checkpoint_dir(path)
    config = read_config(directory)
    if task is not None and config["task"] != task:
        raise CheckpointError(f"{directory}: checkpoint is for task {config['task']!r}, not "
                              f"{task!r}")
    name, kwargs = config["model"], config["model_kwargs"]
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{directory}: model_kwargs {kwargs} do not build {name!r}: "
                              f"{e}") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is not a readable safetensors "
                              f"file (truncated or corrupt?): {e}") from None
    _match_weights(directory, model, state, f"{name!r} with model_kwargs {kwargs}")
    model.load_state_dict(state)
    model.eval()
    _dry_run(directory, model, config)
    return model.to(device), config


def _match_weights(directory: Path, model, state: dict, what: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s tensors."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {own[k]}" for k in own
              if k in state and tuple(state[k].shape) != own[k]]
    if missing or extra or shapes:
        def few(items):
            return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

        parts = [f"{len(missing)} tensor(s) missing ({few(missing)})" if missing else "",
                 f"{len(extra)} unexpected ({few(extra)})" if extra else "",
                 f"{len(shapes)} of other shapes (file vs network: {few(shapes)})" if shapes else ""]
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not hold the weights of {what}: "
                              + "; ".join(p for p in parts if p))


def _dry_run(directory: Path, model, config: dict) -> None:
    """One zero image of the config's geometry through the network: it must take it and give
    the task's output shape (a config for another size or bands fails here)."""
    import torch

    from pipeline.models.tasks import get_task

    shape = (len(config["bands"]), config["size"], config["size"])
    want = tuple(get_task(config["task"]).output_shape(config, shape))
    geometry = f"bands {','.join(config['bands'])}, {config['size']}x{config['size']} px"
    try:
        with torch.no_grad():
            got = tuple(model(torch.zeros(1, *shape)).shape[1:])
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: the network does not take the config's input "
                              f"({geometry}): {str(e).splitlines()[0]}") from None
    if got != want:
        raise CheckpointError(f"{directory}: the network gives outputs of shape {got} for "
                              f"{geometry}; the {config['task']} task wants {want}")


def weights_tag(directory: str | Path, config: dict) -> str:
    """``<model>@<lensray version that trained it>#<first 12 hex of the weights' sha256>``:
    the provenance name of a checkpoint (a directory or its safetensors file)."""
    from pipeline.io.files import sha256_file

    weights = checkpoint_dir(directory) / WEIGHTS_FILE
    return f"{config['model']}@{config.get('lensray_version', 'unknown')}#{sha256_file(weights)[:12]}"


def resolve_checkpoint(spec: str | Path, stage: str) -> Path:
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
