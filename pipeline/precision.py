"""The networks' numeric precisions: one list and one check, importable without torch (stage
specs and the CLI are built on drivers that never load a network)."""

PRECISIONS = ("fp32", "bf16")  # bf16: autocast matmuls/convolutions to bfloat16


def check_precision(value, who: str = "") -> str:
    """``value`` if it is a known precision, else a ValueError naming ``who`` asked for it."""
    if value not in PRECISIONS:
        raise ValueError(f"{who + ': ' if who else ''}precision must be one of {PRECISIONS}, "
                         f"got {value!r}")
    return value
