"""`wasync backfill ACCOUNT [--wait]`: start a backfill through the running daemon's admin
API; with --wait, follow it (a progress bar on a terminal, a line per change otherwise)
and print the account's completeness when it ends."""
from __future__ import annotations

import argparse
import sys
import time

from wasync.runtime.pairing_cli import Api

POLL_S = 1.0
BAR = 30


def main(argv: list[str], settings) -> int:
    parser = argparse.ArgumentParser(prog="wasync backfill", description=__doc__.split("\n\n")[0])
    parser.add_argument("account_id")
    parser.add_argument("--wait", action="store_true", help="follow the run until it ends")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait with --wait")
    args = parser.parse_args(argv)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    api = Api(f"http://{host}:{settings.port}", settings.admin_token)
    try:
        code, body = api.call("POST", f"/api/admin/backfill/{args.account_id}")
    except OSError as exc:
        print(f"wasync backfill: no daemon answers on {api.base} ({exc}); start it with `wasync run`", file=sys.stderr)
        return 1
    if code != 202:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        print(f"wasync backfill: {error.get('message') or body} ({code})", file=sys.stderr)
        return 1
    run_id = body["runId"]
    print(f"backfill of {args.account_id} started (run {run_id})", file=sys.stderr)
    if not args.wait:
        return 0
    return _follow(api, args.account_id, run_id, args.timeout, sys.stderr.isatty())


def _follow(api: Api, account_id: str, run_id: str, timeout_s: float, tty: bool) -> int:
    deadline, last_line = time.monotonic() + timeout_s, None
    seen_running = False
    while time.monotonic() < deadline:
        code, status = api.call("GET", f"/api/admin/backfill/{account_id}/status?threads=1000")
        if code != 200:
            print(f"\nwasync backfill: status answered {code}: {status}", file=sys.stderr)
            return 1
        running = status.get("running")
        if running is not None and running.get("runId") == run_id:
            seen_running = True
            line = _progress(running)
            if tty:
                print("\r" + line, end="", file=sys.stderr, flush=True)
            elif line != last_line:
                print(line, file=sys.stderr)
            last_line = line
        elif seen_running or _finished(status):
            if tty:
                print(file=sys.stderr)
            return _report(status)
        time.sleep(POLL_S)
    print(f"\nwasync backfill: still running after {timeout_s:.0f} s", file=sys.stderr)
    return 1


def _finished(status: dict) -> bool:
    """The run ended before we saw it walk (a quick run, or no on-demand history)."""
    auto = status.get("auto", {}).get("lastAutoBackfillStatus") or {}
    return auto.get("running") is False


def _progress(running: dict) -> str:
    total, done = running.get("threadsTotal") or 0, running.get("threadsDone") or 0
    filled = BAR * done // total if total else 0
    return f"[{'#' * filled}{'.' * (BAR - filled)}] threads {done}/{total}  messages {running.get('messages', 0)}"


def _report(status: dict) -> int:
    last = status.get("last", {})
    stats = last.get("stats") or {}
    c = status.get("completeness", {})
    print(f"{last.get('status')}: threads={stats.get('threads')} messages={stats.get('messages')} "
          f"errors={stats.get('errors')} durationMs={stats.get('durationMs')} onDemand={status.get('onDemand')}")
    print(f"completeness: {c.get('complete')} complete, {c.get('incomplete')} incomplete, "
          f"{c.get('unreachable')} unreachable of {c.get('threads')} threads; {c.get('messagesStored')} messages stored")
    if last.get("error"):
        print(f"error: {last['error']}")
    return 0 if last.get("status") == "success" else 1
