"""ONE Ray Train loop for every stage (the task decides loss, metrics and outputs).

``train(...)`` reads a simulated data directory with Ray Data, runs
``train_loop_per_worker`` under ``ray.train.torch.TorchTrainer``, keeps the best epoch by the
task's validation metric, exports it as ``out/model.safetensors`` + ``out/config.json`` (the
thing a stage loads) and scores it on the held-out TEST split.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.io.schema import IMAGE
from pipeline.models.normalize import DEFAULT_NORMALIZATION
from pipeline.models.registry import default_model, init_network, model_info, model_kwargs
from pipeline.models.tasks import get_task
from pipeline.precision import check_precision

#: defaults of the training recipe (every key can be overridden from the CLI / Tune)
DEFAULTS = {
    "epochs": 10, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "patience": 4,
    "seed": 0, "threads": 1, "max_minutes": None, "shuffle_buffer": 2048,
    "augment": {"max_shift": 2, "max_scale": 0.1, "p_scale": 0.3},
    "normalization": None,  # overrides of pipeline.models.normalize.DEFAULT_NORMALIZATION
    "init": None,  # checkpoint dir to start from (fine-tuning); same network and task
    "regression_weight": None,  # substructure: weight of the regression terms (None: task's)
    "nll_beta": None,  # substructure: beta-NLL exponent (None: task's, plain NLL)
    "train_classes": None,  # train/validate only on rows of these classes (None: all rows)
    "precision": "fp32",  # or "bf16": autocast (faster on CPUs with bf16 units; docs/models.md)
    "denoiser": None,  # train on this denoiser's output (a dir or survey:NAME), the cascade's input
    "adapt": None,  # unlabeled cutouts of the target survey: domain-adversarial training
    #                 (pipeline.train.adapt); after ``prepare`` the record of what was used
    "adapt_weight": 1.0,  # final strength of the adversarial gradient (Ganin et al.'s lambda)
    "adapt_align": "all",  # align the target with all source rows, or with the "negatives" only
}


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker: build model, iterate the dataset shards, report each
    epoch's validation metrics with a safetensors checkpoint, stop early on no progress."""
    import ray.train
    import ray.train.torch
    import torch

    from pipeline._malloc import keep_freed_memory
    from pipeline.models import create_model, save_checkpoint
    from pipeline.train.augment import augment

    keep_freed_memory()  # no page-faulting the same activation buffers in at every step
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"] + rank)
    gen = torch.Generator().manual_seed(cfg["seed"] + 1000 + rank)
    task = get_task(cfg["task"])

    model = create_model(cfg["model"], **cfg["model_kwargs"])
    start_epoch, best, since_best = 0, None, 0
    adversary = None
    if cfg.get("adapt"):  # its hook sits on the bare network, before any DDP wrapping
        from pipeline.train.adapt import Adversary, target_batches

        steps = cfg["trained"]["n_train"] // (cfg["batch_size"] * world)
        adversary = Adversary(model, cfg["adapt_weight"], steps, cfg["epochs"],
                              cfg["adapt_align"])
        targets = target_batches(ray.train.get_dataset_shard("target"), cfg["batch_size"],
                                 cfg["seed"] + 2000 + rank)
    ckpt = ray.train.get_checkpoint()
    from safetensors.torch import load_file

    if ckpt:  # resume (Ray restarts after a failure, or a re-run of the same name)
        with ckpt.as_directory() as d:
            model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
            state = json.loads(Path(d, "config.json").read_text())
            start_epoch = state["epoch"] + 1
            best, since_best = state.get("best"), state.get("since_best", 0)
    elif cfg["init"]:  # fine-tune from a finished checkpoint (or build from another network's)
        state = load_file(os.path.join(cfg["init"], "model.safetensors"))
        if model_info(cfg["model"]).init_from:
            model.init_from(state)
        else:
            model.load_state_dict(state)
    # channels-last convolutions: oneDNN's fast path on CPU (docs/models.md)
    layout = training_layout(model)
    model = ray.train.torch.prepare_model(model.to(memory_format=layout))
    device = ray.train.torch.get_device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=cfg["precision"] == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    if adversary is not None:  # the domain head is training-only: never in a checkpoint
        adversary.head = ray.train.torch.prepare_model(adversary.head)
        params += list(adversary.head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # cosine decay per epoch with a one-epoch linear warm-up
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 2) * 0.5 * (
        1 + math.cos(math.pi * min(e, cfg["epochs"]) / max(cfg["epochs"], 1))))
    for _ in range(start_epoch):
        sched.step()
    sign = 1 if task.mode == "max" else -1
    t0 = time.time()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    step = start_epoch * (adversary.steps_per_epoch if adversary else 0)
    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        tot, n = 0.0, 0
        for batch in train_shard.iter_torch_batches(
            batch_size=cfg["batch_size"], local_shuffle_buffer_size=cfg["shuffle_buffer"],
            local_shuffle_seed=cfg["seed"] + epoch, drop_last=True, device=device,
        ):
            # image labels (the denoiser's clean target) move with their input
            images = augment([batch["x"], *(batch[c] for c in task.image_labels)], gen,
                             **cfg["augment"])
            batch.update(zip(task.image_labels, images[1:], strict=True))
            ns = len(images[0])
            x = images[0]
            if adversary is not None:  # one pass over source + target rows: one batch norm
                x = torch.cat([x, augment([next(targets).to(device)], gen, **cfg["augment"])[0]])
            with autocast:
                out = model(x.contiguous(memory_format=layout))
            loss = task.loss(out[:ns].float(), batch, cfg)
            total = loss if adversary is None else loss + adversary.loss(ns, step, batch)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            tot, n, step = tot + loss.item() * ns, n + ns, step + 1
        sched.step()
        metrics = {"epoch": epoch, "train_loss": tot / max(n, 1), "lr": opt.param_groups[0]["lr"],
                   **(adversary.epoch_metrics() if adversary is not None else {}),
                   **_validate(model, task, val_shard, cfg, device)}
        score = metrics.get(task.monitor, float("nan"))
        improved = best is None or (np.isfinite(score) and sign * (score - best) > 0)
        best, since_best = (score, 0) if improved else (best, since_best + 1)
        out_of_time = cfg["max_minutes"] and (time.time() - t0) / 60 > cfg["max_minutes"]
        stop = since_best >= cfg["patience"] or out_of_time or epoch == cfg["epochs"] - 1
        if world > 1:  # every worker must take the same decision (rank 0's)
            import torch.distributed as dist

            flag = torch.tensor([float(stop)])
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                state = {**cfg, "epoch": epoch, "best": best, "since_best": since_best,
                         "val_metrics": metrics}
                save_checkpoint(model, state, d)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break


def training_layout(model):
    """``torch.channels_last`` unless the network has a 1x1 convolution with fewer than 16 input
    channels: on AVX-512 CPUs oneDNN's channels-last 1x1 weight gradient (torch 2.13, oneDNN
    3.12) corrupts the heap for those (seen with widths 8 and 12, not 16 or more)."""
    import torch

    small = any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels < 16
                for m in model.modules())
    return torch.contiguous_format if small else torch.channels_last


def _validate(model, task, shard, cfg, device) -> dict:
    import torch

    model.eval()
    # Validation without test-time D4 averaging: 8x cheaper, and the loss still ranks epochs.
    net = getattr(model, "module", model)
    tta, net.tta = getattr(net, "tta", False), False
    outs, tot, n = [], 0.0, 0
    labels = {c: [] for c in (*task.label_columns, *task.eval_labels)}
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=256, device=device):
            out = model(batch["x"].contiguous(memory_format=torch.channels_last))
            tot += task.loss(out, batch, cfg).item() * len(out)
            n += len(out)
            outs.append(out.float().cpu().numpy())
            for c in labels:  # IMAGE is the network's input
                labels[c].append(batch["x" if c == IMAGE else c].cpu().numpy())
    net.tta = tta
    if n == 0:
        return {"val_loss": float("nan")}
    pred = task.decode(np.concatenate(outs), cfg)
    lab = {k: np.concatenate(v) for k, v in labels.items()}
    met = {f"val_{k}": float(v) for k, v in task.metrics(pred, lab, cfg).items()}
    return {"val_loss": tot / n, **met}


# ----------------------------------------------------------------------------- driver side
def make_config(stage: str, data_dir, model: str | None = None, bands=None,
                model_overrides: dict | None = None, **recipe) -> dict:
    """The full training config: recipe defaults, data geometry from the manifest/shards,
    task-implied model arguments. Fails before any work on bad input."""
    from pipeline import __version__
    from pipeline.models import list_models
    from pipeline.train.data import read_manifest, split_paths

    task = get_task(stage)
    model = model or default_model(stage)
    if model not in list_models(stage):
        raise ValueError(f"model {model!r} does not serve stage {stage!r} "
                         f"(choose from {list_models(stage)})")
    unknown = set(recipe) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    if recipe.get("precision") is not None:
        check_precision(recipe["precision"])
    if model_info(model).init_from and not recipe.get("init"):
        raise ValueError(f"model {model!r} starts from a trained checkpoint of another network: "
                         f"pass init=<a {stage} checkpoint of that network> (--init)")
    if recipe.get("adapt") and not task.classes:
        raise ValueError(f"adapt: domain-adversarial training adapts classifiers; stage "
                         f"{stage!r} has no classes")
    if recipe.get("adapt_weight") is not None and not recipe["adapt_weight"] > 0:
        raise ValueError(f"adapt_weight must be > 0, got {recipe['adapt_weight']}")
    from pipeline.train.adapt import ALIGN

    align = recipe.get("adapt_align")
    if align is not None and align not in ALIGN:
        raise ValueError(f"adapt_align must be {' or '.join(map(repr, ALIGN))}, got {align!r}")
    if align == "negatives" and task.name != "lens-detect":
        raise ValueError(f"adapt_align='negatives' aligns a survey with the simulated non-lenses: "
                         f"a lens-detect option, not {stage!r}'s")
    bad = set(recipe.get("train_classes") or ()) - set(task.classes or ())
    if bad:
        raise ValueError(f"train_classes {sorted(bad)}: stage {stage!r} has classes "
                         f"{list(task.classes or [])}")
    for s in ("train", "val"):
        split_paths(data_dir, s)
    manifest = read_manifest(data_dir)
    geom = _geometry(data_dir, manifest)
    cfg = {**DEFAULTS, **{k: v for k, v in recipe.items() if v is not None}}
    cfg["augment"] = {**DEFAULTS["augment"], **(recipe.get("augment") or {})}
    cfg.update(task=stage, model=model, bands=list(bands or geom["bands"]), size=geom["size"],
               pixel_scale=geom["pixel_scale"],
               normalization={**DEFAULT_NORMALIZATION, **(recipe.get("normalization") or {})},
               lensray_version=__version__)
    if task.classes:
        cfg["classes"] = list(task.classes)
    if cfg.get("denoiser"):
        cfg["denoiser_weights"] = _check_denoiser(cfg["denoiser"], cfg)
    cfg["trained"] = {"date": _dt.date.today().isoformat(), "data": str(data_dir),
                      "preset": manifest.get("preset"), "data_seed": manifest.get("seed"),
                      "seed": cfg["seed"]}
    cfg["_model_overrides"] = dict(model_overrides or {})
    return cfg


def _check_denoiser(spec: str, cfg: dict) -> str:
    """The weights tag of the denoiser ``spec`` whose output a model trains on; it must take
    the data's geometry (its output is what the model will see)."""
    from pipeline.models.checkpoint import read_config, resolve_checkpoint, weights_tag

    directory = resolve_checkpoint(spec, "denoise")
    dn = read_config(directory)
    if dn["task"] != "denoise":
        raise ValueError(f"denoiser {spec}: a {dn.get('task')!r} checkpoint, not a denoiser")
    mine = {k: cfg[k] for k in ("bands", "size", "pixel_scale")}
    theirs = {k: dn.get(k) for k in mine}
    if (theirs["bands"], theirs["size"]) != (mine["bands"], mine["size"]) or not math.isclose(
            theirs["pixel_scale"] or 0, mine["pixel_scale"], rel_tol=1e-3):
        raise ValueError(f"denoiser {spec} takes {theirs}, the data are {mine}")
    return weights_tag(directory, dn)


def _geometry(data_dir, manifest: dict) -> dict:
    """Bands, cutout size and pixel scale from the manifest, else from the first training
    shard's rows (read with their geometry by ``pipeline.io``)."""
    bands = manifest.get("bands")
    size = manifest.get("size") or manifest.get("num_pix")
    scale = manifest.get("pixel_scale")
    inst = manifest.get("instrument")
    if not scale and isinstance(inst, dict) and inst.get("bands"):  # lensray-sim/1 manifests
        scale = inst["bands"][0].get("pixel_scale")
    if not (bands and size and scale):
        from pipeline.io import ReadOptions, read_fits_file
        from pipeline.io.schema import BAND_NAMES, IMAGE, PIXEL_SCALE
        from pipeline.train.data import split_paths

        first = split_paths(data_dir, "train")[0]
        rows = read_fits_file(first, ReadOptions(geometry=True, strict=True))
        nb, size = rows[IMAGE][0].shape[0], size or rows[IMAGE][0].shape[-1]
        names = rows[BAND_NAMES][0]
        bands = bands or (names.split(",") if names else [str(i) for i in range(nb)])
        scale = scale or (rows[PIXEL_SCALE][0] if np.isfinite(rows[PIXEL_SCALE][0]) else None)
    if not scale:
        raise ValueError(f"{data_dir}: pixel scale unknown (no 'pixel_scale' in manifest.json "
                         "and none in the shards: no celestial WCS or PIXSCALE header)")
    return {"bands": list(bands), "size": int(size), "pixel_scale": float(scale)}


def prepare(stage: str, data_dir, model: str | None = None, *,
            model_overrides: dict | None = None, recipe_command: str | None = None, **recipe):
    """Validate the config, read train/val (and the ``adapt`` target cutouts) with Ray Data
    (materialised once, reused every epoch) and fill in data-derived settings. Returns
    ``(cfg, datasets)``: ``datasets`` has "train", "val" and, when adapting, "target"."""
    from pipeline._ray import ensure_ray
    from pipeline.train.data import load_split, target_stats

    cfg = make_config(stage, data_dir, model, model_overrides=model_overrides, **recipe)
    if recipe_command:
        cfg["trained"]["recipe"] = recipe_command
    ensure_ray()
    train_ds = load_split(data_dir, "train", stage, cfg).materialize()
    val_ds = load_split(data_dir, "val", stage, cfg).materialize()
    init = _read_config(cfg["init"]) if cfg["init"] else None
    cfg["targets"] = {}
    if get_task(stage).targets:  # a model built from another keeps that one's standardisation
        cfg["targets"] = (init.get("targets", {}) if model_info(cfg["model"]).init_from
                          else target_stats(train_ds, stage))
    cfg["trained"]["n_train"], cfg["trained"]["n_val"] = train_ds.count(), val_ds.count()
    cfg["model_kwargs"] = model_kwargs(cfg["model"], cfg, **cfg.pop("_model_overrides"))
    if init is not None:
        _check_init(cfg, init)
    datasets = {"train": train_ds, "val": val_ds}
    if cfg["adapt"]:
        from pipeline.train.adapt import load_target

        datasets["target"], cfg["adapt"] = load_target(cfg["adapt"], cfg)
        cfg["adapt"].update(weight=cfg["adapt_weight"], align=cfg["adapt_align"])
    return cfg, datasets


def _init_dir(init) -> Path:
    init = Path(init).expanduser().resolve()
    return init.parent if init.suffix == ".safetensors" else init


def _read_config(init) -> dict:
    """The config.json of the checkpoint ``init`` (a directory or its safetensors file)."""
    try:
        return json.loads((_init_dir(init) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"init {init}: not a checkpoint directory ({e})") from e


def _check_init(cfg: dict, ref: dict) -> None:
    """``init`` (whose config is ``ref``) must be a checkpoint of the same task and network
    (weights are loaded as is), or of the network the model is built from (``init_from``)."""
    init = _init_dir(cfg["init"])
    if ref.get("task") != cfg["task"]:
        raise ValueError(f"init {init}: task {ref.get('task')!r} differs from this run's "
                         f"{cfg['task']!r}")
    want = init_network(cfg["model"], cfg["model_kwargs"])
    if (ref.get("model"), ref.get("model_kwargs")) != want:
        raise ValueError(f"init {init}: network {ref.get('model')!r} {ref.get('model_kwargs')} "
                         f"cannot start this run's {want[0]!r} {want[1]}")
    cfg["init"] = str(init)


def make_trainer(cfg: dict, datasets: dict, name: str, storage_path, *, num_workers: int = 1,
                 use_gpu: bool | None = None, cpus_per_worker: float = 0.5, callbacks=None):
    """The ``TorchTrainer`` running :func:`train_loop_per_worker` (CPU workers take a
    fractional CPU by default: whole CPUs on a 2-core machine starve Ray Data and hang)."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    task = get_task(cfg["task"])
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(storage_path).resolve()), callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=None, checkpoint_score_attribute=task.monitor,
                checkpoint_score_order=task.mode)),
    )


def train(stage: str, data_dir, out_dir, model: str | None = None, *, num_workers: int = 1,
          use_gpu: bool | None = None, cpus_per_worker: float = 0.5, storage_path=None,
          name: str | None = None, evaluate_test: bool = True,
          model_overrides: dict | None = None, recipe_command: str | None = None,
          **recipe) -> Path:
    """Train ``stage`` on ``data_dir`` with Ray Train; export the best epoch to ``out_dir``.

    ``recipe`` overrides :data:`DEFAULTS` (epochs, batch_size, lr, ...); ``model_overrides``
    the network's constructor arguments. ``use_gpu`` defaults to CUDA availability. Returns
    ``out_dir`` holding model.safetensors + config.json, with held-out TEST metrics under
    ``metrics``; every epoch's checkpoint stays under ``storage_path`` (default
    ``out_dir/ray_runs``).
    """
    cfg, datasets = prepare(stage, data_dir, model, model_overrides=model_overrides,
                            recipe_command=recipe_command, **recipe)
    out_dir = Path(out_dir)
    name = name or f"{stage}-{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = make_trainer(cfg, datasets, name, storage_path or out_dir / "ray_runs",
                           num_workers=num_workers, use_gpu=use_gpu,
                           cpus_per_worker=cpus_per_worker)
    with _EpochReporter(Path(trainer.run_config.storage_path) / name, cfg["epochs"],
                        get_task(stage).monitor):
        result = trainer.fit()
    export_checkpoint(best_checkpoint(result, get_task(stage)), out_dir, history=_history(result))
    if evaluate_test:
        from pipeline.train.evaluate import evaluate_checkpoint

        evaluate_checkpoint(out_dir, data_dir, split="test", write=True)
    return out_dir


class _EpochReporter:
    """Prints each epoch's metrics on the driver as its checkpoint lands in ``run_dir``: the
    workers' own output reaches the driver only with ``-v`` (Ray's worker logs are off by
    default), and an epoch of a real training set takes minutes."""

    def __init__(self, run_dir: Path, epochs: int, monitor: str, every: float = 5.0):
        self.run_dir, self.epochs, self.every = run_dir, epochs, every
        self.keys = dict.fromkeys(("train_loss", "val_loss", monitor, "val_auc", "val_auc_macro",
                                   "domain_loss", "domain_acc"))  # shown when reported, once
        self.seen: set[Path] = set()
        self.t0 = time.time()

    def report_new(self) -> None:
        for f in sorted(self.run_dir.glob("checkpoint_*/config.json")):
            if f in self.seen:
                continue
            try:
                m = json.loads(f.read_text())["val_metrics"]
            except (OSError, ValueError, KeyError):  # still being written: next round
                continue
            self.seen.add(f)
            shown = " ".join(f"{k} {m[k]:.4f}" for k in self.keys if k in m)
            print(f"[lensray] epoch {int(m['epoch']) + 1}/{self.epochs}: {shown} "
                  f"({(time.time() - self.t0) / 60:.1f} min)", file=sys.stderr, flush=True)

    def _watch(self) -> None:
        while not self.stop.wait(self.every):
            self.report_new()

    def __enter__(self):
        import threading

        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.report_new()


def best_checkpoint(result, task) -> str:
    """Path of the best reported checkpoint by the task's monitored metric."""
    cands = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if not cands:
        if result.checkpoint is None:
            raise RuntimeError(f"training reported no checkpoint (error: {result.error})")
        return result.checkpoint.path
    sign = 1 if task.mode == "max" else -1

    def key(cm):
        v = cm[1].get(task.monitor, float("nan"))
        return sign * v if v == v else -math.inf

    return max(cands, key=key)[0].path


def _history(result) -> list[dict]:
    """Per-epoch train/val loss of a Ray Train result (kept in the exported config)."""
    df = result.metrics_dataframe
    if df is None or df.empty:
        return []
    cols = [c for c in ("epoch", "train_loss", "val_loss", "domain_loss", "domain_acc") if c in df]
    df = df[cols].sort_values("epoch")
    return [{k: float(v) for k, v in row.items()} for row in df.to_dict("records")]


def export_checkpoint(src, out_dir, history: list[dict] | None = None) -> Path:
    """Copy a reported checkpoint to ``out_dir``, dropping training-only bookkeeping."""
    from pipeline.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src) / WEIGHTS_FILE, out_dir / WEIGHTS_FILE)
    cfg = json.loads((Path(src) / CONFIG_FILE).read_text())
    cfg.pop("since_best", None)
    cfg.pop("best", None)
    if history is not None:
        cfg["trained"]["history"] = history
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out_dir
