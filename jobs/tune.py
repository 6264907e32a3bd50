"""`ray job submit -- python jobs/tune.py --stage lens-detect --data DIR --out DIR [...]`

Thin entrypoint: the arguments are those of ``lensray tune`` (see ``lensray tune --help``).
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
