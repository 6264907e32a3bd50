"""The shipped networks in fp32 and in bf16 on their TEST splits: metrics, rows/s, score changes.

    python benchmarks/inference_precision.py --lens-data data/euclid-lens-20k \
        --sub-data data/euclid-sub-m48k [--limit 4000] [--threads 2]

The data directories are lensray simulations (``lensray simulate``; see docs/models.md for the
recipes of the shipped weights). For each of lens-detect and substructure it runs ``predict`` on
the TEST split in both precisions and prints the task's headline metrics, rows/s and the median
and largest absolute change of each output column. The basis for offering ``--precision bf16``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

HEADLINE = {"lens-detect": ("auc", "tpr0", "tpr10"),
            "substructure": ("auc_macro", "accuracy", "log10_m_axion_mae_ratio",
                             "log10_m_axion_coverage68")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lens-data", required=True)
    ap.add_argument("--sub-data", required=True)
    ap.add_argument("--limit", type=int, default=4000, help="TEST rows per task at most")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from pipeline.models import load_pretrained, predict
    from pipeline.models.tasks import get_task
    from pipeline.train.evaluate import collect

    torch.set_num_threads(args.threads)
    for task_name, data_dir in (("lens-detect", args.lens_data), ("substructure", args.sub_data)):
        model, config = load_pretrained(task_name)
        task = get_task(task_name)
        data = collect(data_dir, "test", config, limit=args.limit)
        labels = {c: data[c] for c in task.label_columns}
        preds = {}
        print(f"\n{task_name} ({config['model']}), {len(data['image'])} TEST rows, "
              f"{args.threads} threads")
        print("| precision | rows/s | " + " | ".join(HEADLINE[task_name]) + " |")
        print("|---|---:|" + "---:|" * len(HEADLINE[task_name]))
        for precision in ("fp32", "bf16"):
            predict(model, config, data["image"][:8], precision=precision)  # warm-up
            t = time.perf_counter()
            preds[precision] = predict(model, config, data["image"], precision=precision)
            rate = len(data["image"]) / (time.perf_counter() - t)
            metrics = task.metrics(preds[precision], labels, config)
            cells = " | ".join(f"{float(metrics[k]):.4f}" for k in HEADLINE[task_name])
            print(f"| {precision} | {rate:.0f} | {cells} |")
        for col, a in preds["fp32"].items():
            diff = np.abs(a - preds["bf16"][col])
            print(f"  |{col} bf16 - fp32|: median {np.median(diff):.2g}, max {diff.max():.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
