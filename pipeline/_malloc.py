"""``keep_freed_memory()``: ask glibc to keep freed memory for reuse instead of returning it.

Training a convolutional network frees and reallocates the same large activation buffers at
every step. By default glibc serves the largest ones with fresh ``mmap`` calls and trims the rest
back to the system, so every step page-faults them in again. Keeping them speeds up fp32
training (docs/models.md, "Allocator", measured with ``benchmarks/layout_precision.py
--keep-freed-memory``); bf16 activations are half the size and stay under the threshold anyway.
The price: a process holds on to its peak heap.
"""

from __future__ import annotations

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt() parameters


def keep_freed_memory() -> bool:
    """Tune this process's allocator (glibc only); True if it took effect, False elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no glibc (macOS, musl, Windows)
        return False
    # Buffers up to 32 MiB (glibc's maximum) come from the heap, which is trimmed only above
    # 1 GiB free and grows in 256 MiB steps.
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20)))
