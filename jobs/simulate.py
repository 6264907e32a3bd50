"""`ray job submit` entrypoint: simulate a labelled set on the cluster this job runs on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/simulate.py --preset euclid-vis --task lens --n 200000 --seed 1 --out /data/vis-lens

Arguments are those of ``lensray simulate``. Inside a Ray job RAY_ADDRESS is set, so
``pipeline._ray.ensure_ray()`` (called by ``simulate``) joins the existing cluster instead of
starting a local one; the shards are spread over the cluster's workers.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
