"""`ray job submit` entrypoint: cut survey tiles around catalogue sources into cube shards.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/cutout.py --tiles 's3://survey/tiles/*_{band}.fits' \
            --catalog s3://survey/sources.parquet --bands VIS --out /mnt/efs/cubes

Arguments are those of ``lensray cutout``. Inside a Ray job RAY_ADDRESS is set, so the job joins
the running cluster: the tiles are planned on the driver and cut by tasks over its workers.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["cutout", *sys.argv[1:]]))
