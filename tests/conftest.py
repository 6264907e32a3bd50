"""Shared fixtures: one real local Ray for the whole session (starting Ray costs ~4 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# Quiet, local, no usage stats; tests never join another Ray cluster on the machine.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 4 logical CPUs on the 2 real cores.

    Extra logical CPUs keep read tasks, actor pools and Train workers from reserving every CPU:
    fixed reservations that take every CPU make Ray wait forever on 2 cores, with no error.
    """
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        object_store_memory=1 << 30,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
