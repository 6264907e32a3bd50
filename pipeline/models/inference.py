"""``predict``: survey images in, catalogue columns out (normalise -> network -> decode)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pipeline.models.normalize import normalize
from pipeline.models.tasks import get_task
from pipeline.precision import check_precision


def default_device() -> torch.device:
    """CUDA when available, else CPU (chosen at run time)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_chunk(device: torch.device) -> int:
    """Rows per forward pass when the caller does not say: 8 on CPU, 512 on a GPU.

    On CPU, small passes run every shipped network faster per row than large ones: a large
    pass's activations are memory that glibc maps fresh and hands back on every call, so each
    one is page-faulted in again (docs/models.md, "Rows per forward pass", measured with
    ``benchmarks/forward_chunk.py``). A GPU wants large batches.
    """
    return 512 if torch.device(device).type == "cuda" else 8


def check_images(images: np.ndarray, config: dict) -> np.ndarray:
    """Validate (N, B, H, W) against the checkpoint's bands and size; clear error otherwise."""
    x = np.asarray(images, dtype=np.float32)
    bands, size = config["bands"], config["size"]
    if x.ndim == 3 and len(bands) == 1:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != len(bands) or x.shape[2:] != (size, size):
        raise ValueError(
            f"images have shape {x.shape}; model {config['model']!r} ({config['task']}) expects "
            f"(N, {len(bands)}, {size}, {size}) for bands {bands} at {config.get('pixel_scale')}\"/px"
            " (crop/resample with pipeline.models.fit_cutouts)"
        )
    return x


@torch.no_grad()
def predict(model: nn.Module, config: dict, images: np.ndarray, device=None,
            batch_size: int | None = None, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Run ``model`` on ``images`` (float32 (N, B, H, W) in the survey's own units).

    Applies the normalisation stored in ``config`` and returns the task's columns:
    denoise -> ``image`` (in the input's units); lens-detect -> ``p_lens``; substructure ->
    class probabilities and parameter means/sigmas. ``batch_size``: rows per forward pass
    (None: :func:`default_chunk` of the device). ``precision="bf16"`` autocasts the network to
    bfloat16 (faster where the hardware has it; outputs are float32 either way).
    """
    check_precision(precision)
    task = get_task(config["task"])
    x = check_images(images, config)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = batch_size or default_chunk(device)
    # channels-last convolutions: oneDNN's fast path on CPU, same results (docs/models.md)
    model = model.to(device, memory_format=torch.channels_last).eval()
    z, sky, noise = normalize(x, config["normalization"])
    outs = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for i in range(0, len(z), batch_size):
        chunk = z[i : i + batch_size]
        n = len(chunk)
        # Pad to a power of two (at most batch_size): every new input shape costs the CPU
        # backend (oneDNN) cached kernels and heap that are never given back, so the
        # candidate-only substructure batches (any size) grew an actor with each new size
        # (docs/cascade.md, "Batch shapes").
        padded = min(batch_size, 1 << (n - 1).bit_length())
        if padded > n:
            chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]), chunk.dtype)])
        xb = torch.from_numpy(chunk).to(device).contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(xb)
        outs.append(out[:n].float().cpu().numpy())
    if outs:
        out = np.concatenate(outs)
    else:  # no rows: keep the column shapes
        out = np.zeros((0, *task.output_shape(config, x.shape[1:])), np.float32)
    return task.decode(out, config, stats=(sky, noise))


def fit_cutouts(images: np.ndarray, pixel_scale: float, config: dict) -> np.ndarray:
    """Resample (N, B, H, W) cutouts taken at ``pixel_scale`` arcsec/px to the model's pixel
    scale, then centre-crop (or pad with NaN, which normalisation treats as sky) to its size.

    Flux conservation does not matter here: normalisation is unit-free and re-measures the
    noise after resampling.
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"images must be (N, bands, H, W), got shape {tuple(x.shape)}")
    factor = float(pixel_scale) / float(config["pixel_scale"])
    if abs(factor - 1) > 1e-3:
        h, w = (max(1, round(s * factor)) for s in x.shape[-2:])
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                            antialias=factor < 1)
    size = int(config["size"])
    out = np.full((*x.shape[:2], size, size), np.nan, np.float32)
    h, w = x.shape[-2:]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    oy, ox = (size - ch) // 2, (size - cw) // 2
    out[..., oy : oy + ch, ox : ox + cw] = x[..., y0 : y0 + ch, x0 : x0 + cw].numpy()
    return out
