"""One way to get a Ray connection: join the cluster named by RAY_ADDRESS, else start a local one.

``ensure_ray()`` does nothing when Ray is already initialised (tests, user code, ``ray job``
drivers), so library functions can call it freely and still run unchanged on a cluster.

Quiet by default: the Ray it starts sends no worker logs to the driver and logs errors only,
and Ray Data's, Train's and Tune's INFO blocks are hidden (:data:`QUIET_LOGGERS`);
:func:`set_verbose` (``lensray ... -v``) shows them all.
"""

from __future__ import annotations

import logging
import os

_verbose = False
# Quiet: the level each library logger keeps. Ray Data's INFO blocks (plans, progress) and its
# ERROR blocks (a failed task's traceback, which our one line states again) are hidden.
QUIET_LOGGERS = {"ray.data": logging.CRITICAL, "ray.train": logging.ERROR,
                 "ray.tune": logging.ERROR}


def set_verbose(verbose: bool) -> None:
    """Show Ray's logs (True) or keep them quiet (False, the default)."""
    global _verbose
    _verbose = bool(verbose)


def ensure_ray(**init_kwargs):
    """Return the ``ray`` module, initialised.

    If Ray is not initialised yet: with ``RAY_ADDRESS`` set (``ray job submit``, a cluster head)
    connect to that cluster with ``ray.init()``; otherwise start an embedded local Ray
    (``address="local"``, no dashboard) with a reaper (:mod:`pipeline._reaper`) that stops its
    processes if this process dies without shutting it down, so a laptop never joins a stray
    cluster by accident and a killed run leaves nothing behind.
    """
    import ray

    if not ray.is_initialized():
        init_kwargs.setdefault("log_to_driver", _verbose)
        init_kwargs.setdefault("logging_level", logging.INFO if _verbose else logging.ERROR)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**init_kwargs)
        else:
            init_kwargs.setdefault("include_dashboard", False)
            ray.init(address="local", **init_kwargs)
            from pipeline._reaper import watch

            watch(ray._private.worker.global_worker.node.get_session_dir_path())
        import ray.data  # noqa: F401 - configures its loggers on import: quiet them after

        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(logging.INFO if _verbose else level)
    return ray
