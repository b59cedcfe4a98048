"""`wasync` command line. Each command parses its own flags; this only dispatches."""
from __future__ import annotations

import argparse
import json
import os
import sys

from wasync.runtime.logs import setup_logging

COMMANDS = {
    "run": "run the daemon (HTTP on HOST:PORT; settings from the environment)",
    "accounts": "add, list or remove accounts in the store (works without the daemon)",
    "pair": "pair an account through the running daemon (QR in the terminal, or --phone code)",
    "backfill": "start a backfill of ACCOUNT through the running daemon (--wait: follow it)",
    "doctor": "check what an operator checks first: neonize, paths, store, clock",
    "config": "print the effective settings and where each came from",
    "sim": "run the simulated WhatsApp service (docs/simulator.md)",
}


def _usage() -> str:
    lines = ["usage: wasync COMMAND [options]", "", "commands:"]
    lines += [f"  {name:9} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _settings():
    from wasync.runtime.config import ConfigError, load

    try:
        return load()
    except ConfigError as exc:
        for line in exc.problems:
            print(f"wasync: bad setting: {line}", file=sys.stderr)
        return None


def run(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="wasync run", description=COMMANDS["run"]).parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2
    from wasync.runtime.config import ConfigError

    try:
        settings.require_serving()
    except ConfigError as exc:
        print(f"wasync: {exc}", file=sys.stderr)
        return 2
    if settings.sim_address is None:
        from wasync.runtime.config import reexec_for_neonize

        reexec_for_neonize(["run", *argv])
    setup_logging(settings.log_level, settings.log_format)
    import asyncio

    from wasync.runtime.daemon import build_system, serve
    from wasync.runtime.spool import SpoolInUse

    try:
        system = build_system(settings)
    except SpoolInUse as exc:
        print(f"wasync: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(system.start(), settings))


def accounts(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wasync accounts", description=COMMANDS["accounts"])
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="register an account (the daemon starts it within seconds)")
    add.add_argument("account_id")
    add.add_argument("--phone", help="the phone number of an already paired session (digits)")
    sub.add_parser("list", help="print every account document as JSON lines")
    remove = sub.add_parser("remove", help="forget an account (the daemon stops it within seconds)")
    remove.add_argument("account_id")
    args = parser.parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2
    setup_logging("warning")
    from wasync.runtime.account import BadAccount, check_account_id, check_phone
    from wasync.runtime.clock import Clock
    from wasync.runtime.daemon import make_store

    store = make_store(settings)
    try:
        if args.action == "list":
            for doc in store.list_accounts():
                print(json.dumps(doc, sort_keys=True))
            return 0
        try:
            account_id = check_account_id(args.account_id)
            phone = check_phone(args.phone) if args.action == "add" and args.phone else None
        except BadAccount as exc:
            print(f"wasync accounts: {exc}", file=sys.stderr)
            return 2
        if args.action == "add":
            if not store.create_account(account_id, phone, Clock().wall_ms()):
                print(f"wasync accounts: {account_id} exists already", file=sys.stderr)
                return 1
            print(json.dumps(store.get_account(account_id), sort_keys=True))
            return 0
        if not store.delete_account(account_id):
            print(f"wasync accounts: no account {account_id}", file=sys.stderr)
            return 1
        print(f"removed {account_id}")
        return 0
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    if command == "accounts":
        return accounts(rest)
    if command == "pair":
        settings = _settings()
        if settings is None:
            return 2
        from wasync.runtime.pairing_cli import main as pair_main

        return pair_main(rest, settings)
    if command == "backfill":
        settings = _settings()
        if settings is None:
            return 2
        from wasync.runtime.backfill_cli import main as backfill_main

        return backfill_main(rest, settings)
    if command == "doctor":
        settings = _settings()
        if settings is None:
            return 2
        setup_logging("warning")
        from wasync.runtime.doctor import main as doctor_main

        return doctor_main(settings)
    if command == "config":
        from wasync.runtime.config import print_config

        try:
            return print_config()
        except BrokenPipeError:  # `wasync config | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if command == "sim":
        from wasync.runtime.sim.service import main as sim_main

        return sim_main(rest)
    print(f"wasync: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
