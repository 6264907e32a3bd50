"""Images/s of each network under the memory layouts and precisions lensray can use, in one run.

    python benchmarks/layout_precision.py [--threads 2] [--batch 64] [--infer-batch 8] [--keep-freed-memory]

Training (forward + backward + AdamW step, batch ``--batch``) and inference (``--infer-batch``
rows per pass, as ``predict`` on CPU; no gradient, test-time averaging off), each as:

* ``fp32 NCHW``: PyTorch's default layout;
* ``fp32 channels-last``: what ``predict`` and the training loop use;
* ``bf16 channels-last``: ``--precision bf16`` of the training loop (autocast).

Prints a table of images/s and ratios to the default. ``--keep-freed-memory`` first tunes the
allocator as the training loop does (``pipeline._malloc``); glibc cannot be switched back within
a process, so compare two runs. The speed of bf16 depends on the CPU:
AVX512-BF16 or AMX make it fast, without them it is emulated and slow.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

MODELS = {
    "d4_resnet": {"in_channels": 1, "num_outputs": 1, "tta": False},
    "lastro_cnn": {"in_channels": 1, "num_outputs": 1},
    "unet_denoiser": {"in_channels": 1},
}
MODES = (("fp32 NCHW", torch.contiguous_format, False),
         ("fp32 channels-last", torch.channels_last, False),
         ("bf16 channels-last", torch.channels_last, True))


def rate(model, x, fmt, bf16: bool, train: bool, reps: int) -> float:
    model = model.to(memory_format=fmt).train(train)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), 1e-4) if train else None

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                torch.set_grad_enabled(train):
            loss = model(x).float().square().mean()
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()

    for _ in range(2):  # warm-up: kernel selection
        step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return reps * len(x) / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="tune glibc's allocator first, as the training loop does")
    args = ap.parse_args(argv)

    if args.keep_freed_memory:
        from pipeline._malloc import keep_freed_memory

        if not keep_freed_memory():
            ap.error("--keep-freed-memory needs glibc")

    from pipeline.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads"
          f"{', freed memory kept' if args.keep_freed_memory else ''}; images/s (ratio to fp32 NCHW)\n")
    print("| network | work | " + " | ".join(m for m, _, _ in MODES) + " |")
    print("|---|---|" + "---:|" * len(MODES))
    for name, kw in MODELS.items():
        model = create_model(name, **kw)
        for work, train, batch in (("train", True, args.batch),
                                   ("inference", False, args.infer_batch)):
            x = torch.randn(batch, 1, 64, 64)
            reps = args.reps * max(1, 256 // batch) if not train else args.reps  # >= 2k images
            rates = [rate(model, x, fmt, bf16, train, reps) for _, fmt, bf16 in MODES]
            cells = [f"{r:.0f} ({r / rates[0]:.2f}x)" for r in rates]
            print(f"| `{name}` | {work} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
