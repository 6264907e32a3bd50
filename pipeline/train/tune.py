"""Ray Tune over the shared training loop: a search space per model, ASHA early stopping,
the best checkpoint exported like any trained model.

Pattern (Ray 2.60, Train v2): a function trainable builds the same ``TorchTrainer`` as
``lensray train`` with a ``TuneReportCallback`` and calls ``fit()``; the trainable itself
reserves almost no CPU (``tune.with_resources(..., {"CPU": 0.01})``) so that the trainer's
workers can be scheduled on small machines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.models.registry import list_models, model_info, model_kwargs
from pipeline.models.tasks import get_task
from pipeline.train.loop import export_checkpoint, make_trainer, prepare


def search_space(model: str) -> dict:
    """Search space of ``model``: the recipe's learning rate and weight decay, then what the
    model registered (``pipeline.models.model_info(model).search_space``; recipe keys as they
    are, network arguments as ``model.<arg>``)."""
    from ray import tune

    own = model_info(model).search_space
    if not own:
        raise ValueError(f"model {model!r} registered no search space (have: "
                         f"{', '.join(m for m in list_models() if model_info(m).search_space)})")
    space = {"lr": ("loguniform", 5e-4, 5e-3), "weight_decay": ("loguniform", 1e-5, 1e-3), **own}
    return {key: getattr(tune, kind)(*args) for key, (kind, *args) in space.items()}


def _apply(base: dict, sample: dict) -> dict:
    """A trial's training config: the base config with the sampled values applied."""
    cfg = json.loads(json.dumps(base))
    overrides = {k[len("model."):]: v for k, v in sample.items() if k.startswith("model.")}
    cfg.update({k: v for k, v in sample.items() if not k.startswith("model.")})
    cfg["model_kwargs"] = model_kwargs(cfg["model"], cfg, **{**base["model_kwargs"], **overrides})
    return cfg


def _trial(sample: dict, base: dict, datasets: dict, storage: str, cpus_per_worker: float):
    """One Tune trial = one Ray Train run of the shared loop."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = _apply(base, sample)
    trainer = make_trainer(cfg, datasets, name=tune.get_context().get_trial_id(),
                           storage_path=storage, cpus_per_worker=cpus_per_worker,
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def tune_stage(stage: str, data_dir, out_dir, model: str | None = None, *, num_samples: int = 8,
               max_concurrent: int = 2, grace_period: int = 1, cpus_per_worker: float = 0.5,
               storage_path=None, name: str | None = None, evaluate_test: bool = True,
               space: dict | None = None, **recipe) -> tuple[Path, list[dict]]:
    """Search hyper-parameters of ``stage``/``model`` with ASHA; export the best checkpoint
    to ``out_dir`` (scored on the TEST split). Returns ``(out_dir, trials)`` where ``trials`` lists
    each trial's sampled values and best validation score."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base, datasets = prepare(stage, data_dir, model, **recipe)
    task = get_task(stage)
    out_dir = Path(out_dir)
    storage = Path(storage_path or out_dir / "ray_runs").resolve()
    name = name or f"tune-{stage}-{base['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, datasets=datasets,
                             storage=str(storage / name / "train"),
                             cpus_per_worker=cpus_per_worker),
        {"CPU": 0.01})
    tuner = tune.Tuner(
        trainable,
        param_space=space if space is not None else search_space(base["model"]),
        tune_config=tune.TuneConfig(
            num_samples=num_samples, max_concurrent_trials=max_concurrent,
            scheduler=ASHAScheduler(metric=task.monitor, mode=task.mode,
                                    max_t=base["epochs"], grace_period=grace_period)),
        run_config=tune.RunConfig(name=name, storage_path=str(storage)),
    )
    grid = tuner.fit()
    sign = 1 if task.mode == "max" else -1
    best_path, best_score, trials = None, None, []
    for res in grid:
        df = res.metrics_dataframe
        if df is None or task.monitor not in df or "checkpoint_path" not in df:
            trials.append({"config": res.config, "error": str(res.error)})
            continue
        df = df.dropna(subset=[task.monitor, "checkpoint_path"])
        if df.empty:
            continue
        row = df.loc[(sign * df[task.monitor]).idxmax()]
        trials.append({"config": res.config, task.monitor: float(row[task.monitor]),
                       "epochs": int(df["epoch"].max()) + 1})
        if best_score is None or sign * (row[task.monitor] - best_score) > 0:
            best_path, best_score = row["checkpoint_path"], float(row[task.monitor])
    if best_path is None:
        raise RuntimeError(f"no trial of {name} reported a checkpoint: {trials}")
    export_checkpoint(best_path, out_dir)
    cfg_file = out_dir / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["trained"]["tune"] = {"name": name, "num_samples": num_samples, "monitor": task.monitor,
                              "best": best_score, "trials": trials}
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    if evaluate_test:
        from pipeline.train.evaluate import evaluate_checkpoint

        evaluate_checkpoint(out_dir, data_dir, split="test", write=True)
    return out_dir, trials
