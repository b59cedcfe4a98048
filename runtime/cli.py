"""`wasync` command line. Each command parses its own flags; this only dispatches."""
from __future__ import annotations

import sys

COMMANDS = {
    "config": "print the effective settings and where each came from",
    "sim": "run the simulated WhatsApp service (SIMULATOR.md)",
}


def _usage() -> str:
    lines = ["usage: wasync COMMAND [options]", "", "commands:"]
    lines += [f"  {name:8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "config":
        from wasync.runtime.config import print_config

        return print_config()
    if command == "sim":
        from wasync.runtime.sim.service import main as sim_main

        return sim_main(rest)
    print(f"wasync: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
