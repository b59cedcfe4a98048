"""`wasync` command line: run | sim | accounts | pair | backfill | bench | config."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", help="print the effective settings and where each came from")
    args = parser.parse_args(argv)
    if args.command == "config":
        from wasync.runtime.config import print_config

        return print_config()
    return 2


if __name__ == "__main__":
    sys.exit(main())
