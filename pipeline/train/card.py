"""Ship a trained checkpoint as the package's pretrained weights, with a model card.

``ship(checkpoint, stage)`` copies ``model.safetensors`` + ``config.json`` into the stage's
shipped-weights directory (``pipeline.models.pretrained_dir``) and writes ``MODEL_CARD.md`` from the config: training data preset
and seed, recipe command, held-out TEST metrics, size, checksum and date.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.io.files import sha256_file
from pipeline.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, pretrained_dir

CARD_FILE = "MODEL_CARD.md"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(config: dict, weights: Path, sections: list[str] = ()) -> str:
    """Markdown model card of a checkpoint (config + weights file)."""
    from pipeline.models import create_model

    n = sum(p.numel() for p in create_model(config["model"], **config["model_kwargs"]).parameters())
    sha = sha256_file(weights)
    tr = config.get("trained", {})
    m = dict(config.get("metrics") or {})
    lines = [
        f"# {config['task']}: `{config['model']}`", "",
        "| | |", "|---|---|",
        f"| task | {config['task']} |",
        f"| network | `{config['model']}` {json.dumps(config['model_kwargs'])} |",
        f"| parameters | {n:,} |",
        f"| weights | `{WEIGHTS_FILE}`, {weights.stat().st_size / 1e6:.2f} MB, sha256 `{sha}` |",
        f"| input | bands {config['bands']}, {config['size']}x{config['size']} px at "
        f"{config['pixel_scale']}\"/px |",
        f"| normalisation | {json.dumps(config['normalization'])} (pipeline.models.normalize) |",
        f"| training data | preset `{tr.get('preset')}`, simulation seed {tr.get('data_seed')}, "
        f"`{tr.get('data')}` ({tr.get('n_train')} train / {tr.get('n_val')} val cutouts) |",
        f"| training | seed {tr.get('seed')}, best validation loss at epoch "
        f"{config.get('epoch', 0) + 1} of up to {config.get('epochs')}, batch {config.get('batch_size')}, "
        f"lr {config.get('lr')}, AdamW wd {config.get('weight_decay')}, augmentation "
        f"{json.dumps(config.get('augment'))} |",
        f"| recipe | `{tr.get('recipe', 'lensray train ...')}` |",
        f"| date | {tr.get('date')} |",
        f"| lensray | {config.get('lensray_version')} |", "",
        f"## Held-out TEST metrics ({m.pop('split', '?')} split of `{m.pop('data', '?')}`, "
        f"n={m.pop('n', '?')})", "",
        "| metric | value |", "|---|---|",
    ]
    m.pop("plots", None)
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(m.items())]
    if tr.get("history"):
        lines += ["", "## Training history", "", "| epoch | train loss | val loss |",
                  "|---|---|---|"]
        lines += [f"| {int(h['epoch'])} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |"
                  for h in tr["history"]]
    lines += ["", *sections]
    return "\n".join(lines).rstrip() + "\n"


def ship(checkpoint, stage: str, sections: list[str] = (), dest=None,
         survey: str | None = None) -> Path:
    """Copy a checkpoint into the shipped weights of ``stage`` for ``survey`` (None: the
    default; or into ``dest``) and write its model card."""
    default_dest = pretrained_dir(stage, survey)  # also checks the stage name
    src = Path(checkpoint)
    config = json.loads((src / CONFIG_FILE).read_text())
    if config["task"] != stage:
        raise ValueError(f"{src}: checkpoint is for stage {config['task']!r}, not {stage!r}")
    dest = Path(dest) if dest else default_dest
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    shutil.copyfile(src / CONFIG_FILE, dest / CONFIG_FILE)
    (dest / CARD_FILE).write_text(model_card(config, dest / WEIGHTS_FILE, sections))
    return dest
