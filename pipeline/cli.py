"""The ``lensray`` command: one entry point, one sub-command per job.

Each sub-command is a pair ``_add_<name>(parser)`` / ``_run_<name>(args)`` registered in
``COMMANDS``; the work itself lives in the package, so the CLI, ``jobs/`` and users' Python
all call the same functions. Heavy imports happen inside ``_run_*`` to keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import sys

# ----------------------------------------------------------------------------- sub-commands
# (add new sub-commands below as _add_x/_run_x pairs and list them in COMMANDS)


COMMANDS: dict[str, tuple] = {}


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = argparse.ArgumentParser(
        prog="lensray", description="Survey-scale strong-lens pipeline on Ray."
    )
    parser.add_argument("--version", action="version", version=f"lensray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _add, run, _help = COMMANDS[args.command]
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
