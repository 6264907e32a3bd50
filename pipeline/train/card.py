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
from pipeline.models.checkpoint import CONFIG_FILE, WEIGHTS_DIR, WEIGHTS_FILE, pretrained_dir

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
        *_adaptation(config.get("adapt")),
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
        dom = "domain_loss" in tr["history"][0]  # adapted (pipeline.train.adapt)
        lines += ["", "## Training history", "",
                  "| epoch | train loss | val loss |" + " domain loss | domain acc |" * dom,
                  "|---|---|---|" + "---|---|" * dom]
        lines += [f"| {int(h['epoch'])} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |"
                  + (f" {h['domain_loss']:.4f} | {h['domain_acc']:.3f} |" if dom else "")
                  for h in tr["history"]]
    lines += _real_sky(config.get("real_sky"))
    lines += ["", *sections]
    return "\n".join(lines).rstrip() + "\n"


def _adaptation(a: dict | None) -> list[str]:
    """The card's row on adaptation to a survey's unlabeled cutouts (``pipeline.train.adapt``)."""
    if not a:
        return []
    more = f" and {a['n_files'] - len(a['files'])} more" if a["n_files"] > len(a["files"]) else ""
    against = ("the simulated non-lenses" if a.get("align") == "negatives"
               else "all training cutouts")
    return [f"| adaptation | {a['method']} (domain-adversarial against {against}, weight "
            f"{a.get('weight')}) on "
            f"{a['n']} unlabeled cutouts ({a['n_refused']} refused) of "
            f"{', '.join(f'`{f}`' for f in a['files'])}{more} |"]


def portable(config: dict) -> dict:
    """``config`` with the machine's absolute paths of its training data, run directory,
    starting checkpoint and adaptation targets written as ``data/NAME``, ``runs/NAME`` (shipped
    weights: ``pipeline/weights/...``) and ``NAME`` (shipped files name no machine paths)."""
    text = json.dumps(config)
    tr = config.get("trained", {})
    recipe = tr.get("recipe", "").split()
    out = recipe[recipe.index("--out") + 1] if "--out" in recipe[:-1] else None
    targets = []
    if "--adapt" in recipe:
        for arg in recipe[recipe.index("--adapt") + 1:]:
            if arg.startswith("--"):
                break
            targets.append(arg.strip("'\""))
    init = config.get("init")
    if init and Path(init).is_relative_to(WEIGHTS_DIR.parent.parent):  # fine-tuned from shipped
        text = text.replace(json.dumps(init)[1:-1],
                            str(Path(init).relative_to(WEIGHTS_DIR.parent.parent)))
        init = None
    for path, home in ((tr.get("data"), "data"), (out, "runs"), (init, "runs"),
                       *((t, None) for t in targets)):
        if path and Path(path).is_absolute():
            name = Path(path).name
            text = text.replace(json.dumps(path)[1:-1], f"{home}/{name}" if home else name)
    return json.loads(text)


def _by_class(r: dict) -> str:
    """The SDSS flag rate by Galaxy Zoo class, when the row has it, for the card's sentence."""
    by = r.get("sdss_flag_0.5_by_class")
    return (f" (spirals {by['spirals']:.1%}, non-spirals {by['non_spirals']:.1%})"
            if by and {"spirals", "non_spirals"} <= set(by) else "")


def _real_sky(r: dict | None) -> list[str]:
    """The card's real-sky section from a ``benchmarks/real_sky.py`` row."""
    if not r:
        return []
    lines = ["", "## Real sky (never seen in training)", "",
             f"`{r['command']}`: real SDSS galaxies (Galaxy Zoo 2, `{r['sdss']}`, n={r['n_sdss']}) "
             f"flagged at p_lens > 0.5: {r['sdss_flag_0.5']:.1%}{_by_class(r)}, > 0.9: "
             f"{r['sdss_flag_0.9']:.1%}; real lenses vs real non-lenses (fixtures + SDSS) AUC "
             f"{r['real_auc_with_sdss']:.3f}. Observed cutouts of `tests/data/real` and "
             "`tests/data/real_backgrounds`, and (single-band models) three lenses of another "
             "simulator, DeepLense (`sim lens`, `tests/data/sim/deeplense`, never in a real AUC) "
             f"(`tests/data/README.md`), resampled to {r['pixel_scale']}\"/px:", "",
             "| cutout | label | p_lens |", "|---|---|---|"]
    return lines + [f"| {x['file']} | {x['label']} | {x['p_lens']:.3f} |" for x in r["fixtures"]]


def ship(checkpoint, stage: str, sections: list[str] = (), dest=None,
         survey: str | None = None, real_sky: dict | None = None) -> Path:
    """Copy a checkpoint into the shipped weights of ``stage`` for ``survey`` (None: the
    default; or into ``dest``) and write its model card; ``real_sky`` (a row of
    ``benchmarks/real_sky.py --json`` with its ``command``) goes into both."""
    default_dest = pretrained_dir(stage, survey)  # also checks the stage name
    src = Path(checkpoint)
    config = json.loads((src / CONFIG_FILE).read_text())
    if config["task"] != stage:
        raise ValueError(f"{src}: checkpoint is for stage {config['task']!r}, not {stage!r}")
    config = portable(config)
    if real_sky:
        config["real_sky"] = {**real_sky, "pixel_scale": config["pixel_scale"]}
        config["real_sky"].pop("checkpoint", None)
    dest = Path(dest) if dest else default_dest
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (dest / CARD_FILE).write_text(model_card(config, dest / WEIGHTS_FILE, sections))
    return dest
