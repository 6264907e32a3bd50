"""`ray job submit --working-dir . -- python jobs/run.py INPUT... --out DIR [...]`

Thin entrypoint for the main job: the arguments are those of ``lensray run`` (see
``lensray run --help``). Inside ``ray job submit`` Ray sets RAY_ADDRESS, so the cascade joins the
running cluster; run directly, it starts an embedded local Ray.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
