"""Accuracy benchmark: the three lens finders side by side, plus the shipped substructure and
denoising stages, on held-out TEST splits of our simulations. Prints a Markdown report.

    python benchmarks/accuracy.py --lens-data euclid-vis=data/euclid-lens-20k \
        --lens-data ground-gri=data/gri-lens-6k --train-shards 4 --epochs 3 \
        --substructure-data data/euclid-sub-12k --denoise-data data/euclid-clean-5k \
        --out benchmarks/accuracy.md

Every lens finder is trained through the product's recipe (``pipeline.train.loop.train``: Ray
Train, same data, epochs and seed). Inference speed is measured in this run on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINDERS = ("deeplens_resnet", "lastro_cnn", "d4_resnet")


def subset(data_dir: Path, train_shards: int | None, dest: Path) -> Path:
    """A data dir whose train split holds only the first ``train_shards`` shards (symlinks)."""
    if not train_shards:
        return data_dir
    for split in ("train", "val", "test"):
        (dest / split).mkdir(parents=True, exist_ok=True)
        files = sorted((data_dir / split).glob("*.fits"))
        for f in files[:train_shards] if split == "train" else files:
            os.symlink(f.resolve(), dest / split / f.name)
    shutil.copy(data_dir / "manifest.json", dest / "manifest.json")
    return dest


def inference_speed(model, config, images: np.ndarray, threads: int = 1) -> float:
    """Images per second of ``predict`` (normalisation included) on ``threads`` CPU threads."""
    import torch

    from pipeline.models import predict

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predict(model, config, images[:32], device="cpu")  # warm-up
        t = time.perf_counter()
        predict(model, config, images, device="cpu", batch_size=128)
        return len(images) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def bench_finders(name: str, data_dir: Path, args, work: Path) -> list[dict]:
    from pipeline.models import load_checkpoint
    from pipeline.train.evaluate import collect
    from pipeline.train.loop import train

    data = subset(data_dir, args.train_shards, work / f"data-{name}")
    rows = []
    for model_name in FINDERS:
        out = work / f"{name}-{model_name}"
        t0 = time.time()
        train("lens-detect", data, out, model_name, epochs=args.epochs, seed=args.seed,
              patience=args.epochs, threads=args.threads, name=f"bench-{name}-{model_name}")
        minutes = (time.time() - t0) / 60
        model, cfg = load_checkpoint(out)
        imgs = collect(data, "test", cfg, limit=args.speed_images)["image"]
        m = cfg["metrics"]
        rows.append({"data": name, "model": model_name, "auc": m["auc"], "tpr0": m["tpr0"],
                     "tpr10": m["tpr10"], "purity_at_c50": m["purity_at_c50"],
                     "n_test": m["n"], "params": n_params(model),
                     "train_min": minutes, "epochs_run": cfg["epoch"] + 1,
                     "img_per_s": inference_speed(model, cfg, imgs),
                     "n_train": cfg["trained"]["n_train"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lens-data", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--train-shards", type=int, default=None, help="train shards per data set")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed-images", type=int, default=512)
    p.add_argument("--substructure", default=None, help="checkpoint (default: shipped)")
    p.add_argument("--substructure-data", default=None)
    p.add_argument("--denoise", default=None, help="checkpoint (default: shipped)")
    p.add_argument("--denoise-data", default=None, help="data with CLEAN images and is_lens")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    p.add_argument("--append", action="store_true", help="append sections to --out")
    args = p.parse_args(argv)

    from pipeline._ray import ensure_ray
    from pipeline.models import load_checkpoint, load_pretrained
    from pipeline.train.evaluate import denoiser_effect_on_detector, evaluate_model

    ensure_ray()
    lines = ["# Accuracy benchmark", "",
             f"Held-out TEST splits of lensray simulations; lens finders trained with the same "
             f"data, {args.epochs} epochs and seed {args.seed} through `pipeline.train.loop.train` "
             f"(Ray Train, {args.threads} torch thread(s), machine shared with other jobs). "
             "Inference speed: `predict` incl. normalisation, 1 CPU thread, batch 128.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for item in args.lens_data:
            name, _, d = item.partition("=")
            rows += bench_finders(name, Path(d), args, Path(tmp))
        if rows:
            lines += ["## Lens finders", "",
                      "| data | model | AUC | TPR0 | TPR10 | purity@50% (1:1000) | params | "
                      "CPU img/s | train min | n_train / n_test |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(
                    f"| {r['data']} | {r['model']} | {r['auc']:.4f} | {r['tpr0']:.3f} | "
                    f"{r['tpr10']:.3f} | {r['purity_at_c50']:.3f} | {r['params']:,} | "
                    f"{r['img_per_s']:.0f} | {r['train_min']:.1f} | "
                    f"{r['n_train']} / {r['n_test']} |")
            lines.append("")
    if args.substructure_data:
        model, cfg = (load_checkpoint(args.substructure) if args.substructure
                      else load_pretrained("substructure"))
        m = evaluate_model(model, cfg, args.substructure_data, "test")
        print(json.dumps(m, default=str), flush=True)
        lines += ["## Substructure (shipped model)" if not args.substructure else
                  "## Substructure", "",
                  f"`{cfg['model']}` on `{args.substructure_data}` test split (n={m['n']}).", "",
                  "| AUC no_sub | AUC cdm | AUC vortex | macro AUC | micro AUC | accuracy |",
                  "|---|---|---|---|---|---|",
                  f"| {m['auc_no_sub']:.4f} | {m['auc_cdm']:.4f} | {m['auc_vortex']:.4f} | "
                  f"{m['auc_macro']:.4f} | {m['auc_micro']:.4f} | {m['accuracy']:.3f} |", "",
                  "| target (rows) | n | MAE | MAE floor | ratio | MSE | MSE floor | "
                  "68% cov. | 95% cov. |", "|---|---|---|---|---|---|---|---|---|"]
        for t, rows_name in (("log10_m_axion", "vortex"), ("sigma_sub", "cdm")):
            lines.append(
                f"| {t} ({rows_name}) | {m[f'{t}_n']} | {m[f'{t}_mae']:.4f} | "
                f"{m[f'{t}_mae_floor']:.4f} | {m[f'{t}_mae_ratio']:.3f} | {m[f'{t}_mse']:.5f} | "
                f"{m[f'{t}_mse_floor']:.5f} | {m[f'{t}_coverage68']:.3f} | "
                f"{m[f'{t}_coverage95']:.3f} |")
        lines.append("")
    if args.denoise_data:
        model, cfg = load_checkpoint(args.denoise) if args.denoise else load_pretrained("denoise")
        m = evaluate_model(model, cfg, args.denoise_data, "test")
        det, det_cfg = load_pretrained("lens-detect")
        eff = denoiser_effect_on_detector(model, cfg, det, det_cfg, args.denoise_data, "test")
        print(json.dumps({**m, **eff}, default=str), flush=True)
        lines += ["## Denoiser", "",
                  f"`{cfg['model']}` on `{args.denoise_data}` test split (n={m['n']}); "
                  "PSNR/SSIM against the noiseless image, data range of each clean image.", "",
                  "| | PSNR (dB) | SSIM |", "|---|---|---|",
                  f"| noisy input (identity) | {m['psnr_input']:.2f} | {m['ssim_input']:.4f} |",
                  f"| denoised | {m['psnr']:.2f} | {m['ssim']:.4f} |", "",
                  f"Shipped lens detector on the same cutouts: AUC {eff['auc_raw']:.4f} raw vs "
                  f"{eff['auc_denoised']:.4f} denoised; TPR0 {eff['tpr0_raw']:.3f} vs "
                  f"{eff['tpr0_denoised']:.3f} (n={eff['n']}).", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        if args.append and Path(args.out).exists():
            report = Path(args.out).read_text().rstrip() + "\n\n" + "\n".join(lines[4:])
        Path(args.out).write_text(report.rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
