"""`ray job submit -- python jobs/train.py --stage lens-detect --data DIR --out DIR [...]`

Thin entrypoint: the arguments are those of ``lensray train`` (see ``lensray train --help``).
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
