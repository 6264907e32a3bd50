"""One way to get a Ray connection: join the cluster named by RAY_ADDRESS, else start a local one.

``ensure_ray()`` does nothing when Ray is already initialised (tests, user code, ``ray job``
drivers), so library functions can call it freely and still run unchanged on a cluster.
"""

from __future__ import annotations

import os


def ensure_ray(**init_kwargs):
    """Return the ``ray`` module, initialised.

    If Ray is not initialised yet: with ``RAY_ADDRESS`` set (``ray job submit``, a cluster head)
    connect to that cluster with ``ray.init()``; otherwise start an embedded local Ray
    (``address="local"``, no dashboard), so a laptop never joins a stray cluster by accident.
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**init_kwargs)
        else:
            init_kwargs.setdefault("include_dashboard", False)
            ray.init(address="local", **init_kwargs)
    return ray
