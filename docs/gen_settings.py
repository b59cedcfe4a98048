"""Print docs/settings.md from the `Var` table in runtime/config.py.

    .venv/bin/python docs/gen_settings.py > docs/settings.md

The table is read, never copied: names, legacy aliases, defaults and accepted values come
from `VARIABLES` (accepted values and minimums by asking each parser about a few probe
values, so they follow the code). A meaning comes from the Var's `help`; for Vars
without one, from FALLBACK below. tests/test_docs.py fails when docs/settings.md differs
from what this prints, so a new or changed setting means running the command above.
"""
from __future__ import annotations

import re
import sys
from decimal import Decimal

from wasync.runtime import config

COMMAND = ".venv/bin/python docs/gen_settings.py > docs/settings.md"

# Meanings for Vars whose `help` is empty (checked against the code that reads them).
FALLBACK = {
    "LOG_LEVEL": "log level; `debug` also lets neonize's and whatsmeow's own log through",
    "WASYNC_MAX_STARTS_PER_SECOND": "session starts (first starts, restarts, simulator reconnects) per second "
                                    "on this instance, with jitter: start-up storm control",
    "WASYNC_STORE": "`sqlite` (embedded: `$WASYNC_DATA_DIR/wasync.db`) or `firestore`",
    "GOOGLE_CLOUD_PROJECT": "Firestore project id (default: the credentials'); required with "
                            "FIRESTORE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS": "service-account key file for Firestore",
    "FIREBASE_SERVICE_ACCOUNT_JSON": "service-account key as JSON text; wins over "
                                     "GOOGLE_APPLICATION_CREDENTIALS",
    "FIRESTORE_EMULATOR_HOST": "talk to the Firestore emulator at host:port (wins over any credentials)",
    "WHATSAPP_SYNC_FULL_HISTORY": "ask the phone for its full history when an account pairs (`requireFullSync`)",
    "WHATSAPP_HISTORY_SYNC_DRY_RUN": "count history-sync messages, store none of them",
    "WHATSAPP_BACKFILL_INTERVAL_SECONDS": "auto-backfill tick",
    "WHATSAPP_BACKFILL_COOLDOWN_MINUTES": "after a successful auto backfill an account rests this long",
    "AUTO_BACKFILL_ATTEMPT_BACKOFF_MS": "after any other backfill attempt an account rests this long",
    "AUTO_BACKFILL_LEASE_MS": "backfill job lock duration (a run longer than 90 % of it is cancelled)",
    "AUTO_BACKFILL_MAX_ACCOUNTS_PER_TICK": "backfills started per tick (accounts waiting longest first)",
    "WHATSAPP_BACKFILL_CONCURRENCY": "backfills running at once on this instance",
    "WHATSAPP_BACKFILL_THREADS": "threads per backfill run (most recent first)",
    "WHATSAPP_BACKFILL_COUNT": "most messages fetched per thread and run",
    "WHATSAPP_BACKFILL_MESSAGES_PER_THREAD": "page size of one history request",
    "WHATSAPP_BACKFILL_MAX_DAYS": "skip threads idle for longer (unset: none skipped)",
    "RECENT_SYNC_ENABLED": "recent-sync (the gap filler) on",
    "RECENT_SYNC_INTERVAL_MS": "recent-sync tick",
    "RECENT_SYNC_LOOKBACK_MS": "recent-sync looks at threads active within this window",
    "RECENT_SYNC_MAX_THREADS": "threads per account and recent-sync run",
    "RECENT_SYNC_MAX_MESSAGES_PER_THREAD": "messages asked for behind a thread's newest stored message",
    "RECENT_SYNC_MAX_CONCURRENCY": "recent-syncs running at once on this instance",
    "RECENT_SYNC_LEASE_MS": "recent-sync job lock duration",
    "AUTO_REPAIR_THREADS_ENABLED": "recompute threads' `lastMessage*` fields after each backfill",
    "AUTO_REPAIR_THREADS_LIMIT_PER_RUN": "threads checked per repair run",
    "AUTO_REPAIR_COOLDOWN_MINUTES": "least time between two repairs of one account",
    "WHATSAPP_DEGRADED_AFTER_MS": "protocol-only traffic this long while connected: the session is degraded",
    "REPAIR_ALERT_WEBHOOK_URL": "POST a JSON alert `{accountId, reason, since, instanceId, status}` when an "
                                "account needs re-pairing",
}
# Added to a Var's own meaning (its help says the what; these say the how).
NOTES = {
    "INSTANCE_ID": "unique per process: names the instance in leases, heartbeats, logs, `/ready`",
    "ADMIN_TOKEN": "required when HOST is not loopback; unset, the admin API is open on loopback",
    "WASYNC_DATA_DIR": "(`wasync.db`, `spool/{INSTANCE_ID}.db`, default `sessions/`)",
    "SESSIONS_PATH": "(neonize: `{accountId}.sqlite3` per account; simulator: `{accountId}.sim.json`)",
    "SESSIONS_DSN": "used instead of SESSIONS_PATH files, so any instance can take an account over",
    "WASYNC_LEASE_MS": "(renewed every third of it; set the same on every instance)",
}
# Derived defaults (callables in the table), by function name.
DERIVED = {"_default_instance_id": "`hostname-pid`", "_default_sessions_path": "`$WASYNC_DATA_DIR/sessions`"}
UNITS = {"milliseconds": ("ms", 1), "seconds": ("s", 1000), "minutes": ("min", 60_000)}

PREAMBLE = """\
# Settings

Generated from the `Var` table in `runtime/config.py` by `{command}`; do not edit by hand.

All settings come from the environment, read once at start. Rules (`runtime/config.py`):

- A setting may have legacy aliases (the old backend's names). The preferred name is read
  first; an alias is read only when the preferred name is unset. An empty value counts as
  unset. Where an alias takes another unit, the "accepted" column says so per name.
- A bad value stops `wasync run` (and `wasync config`) with one line per bad variable:
  `wasync: bad setting: PORT='abc': expected an integer from 1 to 65535`.
- Durations are decimal numbers of the unit in the name (`1.5` seconds is fine) that come to
  whole milliseconds. Booleans take `true/false/1/0/yes/no`.
- `wasync config` prints every effective value with its source (`default`, `env NAME`,
  `legacy NAME`); values marked *secret* are masked there and in error lines.
- When serving, `ADMIN_TOKEN` is required if `HOST` is not loopback, and
  `GOOGLE_CLOUD_PROJECT` is required with `WASYNC_STORE=firestore` and
  `FIRESTORE_EMULATOR_HOST`.
- Not in the table: `NEONIZE_BOT_TAG` belongs in the unit's environment (`off`); `wasync run`
  re-executes itself to add it otherwise (see the README, "Pair a real phone").
"""


def _problems(parse, raw: str) -> str | None:
    try:
        parse(raw)
    except config.BadValue as exc:
        return str(exc)
    return None


def _number(value: Decimal | int | float) -> str:
    text = format(Decimal(str(value)).normalize(), "f")
    return text


def accepted(parse) -> tuple[str, str | None]:
    """(what the parser accepts, its duration unit name or None)."""
    first = _problems(parse, "") or ""
    what = first.removeprefix("expected ")
    unit = next((name for name in UNITS if what == f"a number of {name}"), None)
    if unit is None:
        if what.startswith("one of true/false"):
            return "boolean", None
        if what == "a non-empty value":
            return "text", None
        return what.removeprefix("an ").removeprefix("a "), None
    minimums = [int(m) for raw in ("0", "1") for m in re.findall(r"at least (\d+) ms", _problems(parse, raw) or "")]
    low = Decimal(max(minimums, default=0)) / UNITS[unit][1]
    return f"{unit} ≥ {_number(low)}", unit


def default_text(var: config.Var, unit: str | None) -> str:
    value = var.default
    if callable(value):
        return DERIVED.get(getattr(value, "__name__", ""), "derived")
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if unit is not None:
        symbol, factor = UNITS[unit]
        return f"`{_number(Decimal(value) / factor)}` ({symbol})"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    for var in config.VARIABLES:
        parsers = var.parse if isinstance(var.parse, tuple) else (var.parse,) * len(var.names)
        kinds = [accepted(p) for p in parsers]
        if len({k[0] for k in kinds}) == 1:
            values = kinds[0][0]
        else:
            values = "; ".join(f"{name}: {kind[0]}" for name, kind in zip(var.names, kinds))
        meaning = var.help or FALLBACK.get(var.names[0], "(no help text in runtime/config.py)")
        if var.names[0] in NOTES:
            note = NOTES[var.names[0]]
            meaning += " " + note if note.startswith("(") else "; " + note
        if var.secret:
            meaning += " (*secret*)"
        aliases = ", ".join(f"`{n}`" for n in var.names[1:]) or "–"
        out.append((f"`{var.names[0]}`", aliases, default_text(var, kinds[0][1]), values, meaning))
    switches = config.AUTO_BACKFILL_SWITCHES
    out.append((f"`{switches[0]}`", ", ".join(f"`{n}`" for n in switches[1:]), "`true`", "boolean",
                "automatic backfill on; unlike other aliases both names are read, and either one set to "
                "false turns it off"))
    return out


def render() -> str:
    lines = [PREAMBLE.format(command=COMMAND), "| variable | legacy alias(es) | default | accepted | meaning |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows()]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
