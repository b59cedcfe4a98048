"""Settings: every variable of SPEC §3, read once, validated, frozen.

This is the only module that reads the process environment. Each variable is declared
once in `VARIABLES` (names, parser, default); `load()` turns an environment mapping into
a `Settings` and remembers where every value came from, so `wasync config` can show it.
A bad value raises `ConfigError` carrying one line per offending variable.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """One or more variables have bad values; `problems` has one line per variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class BadValue(ValueError):
    """Raised by a parser; the message says what is expected."""


# --- parsers ----------------------------------------------------------------------

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadValue("expected one of true/false/1/0/yes/no")


def int_in(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise BadValue(_range_text("an integer", lo, hi)) from None
        if value < lo or (hi is not None and value > hi):
            raise BadValue(_range_text("an integer", lo, hi))
        return value

    return parse


def duration_ms(unit_ms: int, minimum_ms: int = 1) -> Callable[[str], int]:
    """A duration given in some unit (ms, s, min), converted exactly to whole ms."""
    unit_name = {1: "milliseconds", 1000: "seconds", 60_000: "minutes"}[unit_ms]

    def parse(raw: str) -> int:
        try:
            value = Decimal(raw.strip()) * unit_ms
        except InvalidOperation:
            raise BadValue(f"expected a number of {unit_name}") from None
        if not value.is_finite() or value != value.to_integral_value():
            raise BadValue(f"expected a number of {unit_name} that is a whole number of milliseconds")
        if value < minimum_ms:
            raise BadValue(f"expected at least {minimum_ms} ms ({unit_name})")
        return int(value)

    return parse


MIN_LEASE_MS = 3000


def lease_ms(raw: str) -> int:
    """WASYNC_LEASE_MS: renewals every third of it must leave room for a store round trip."""
    value = duration_ms(1)(raw)
    if value < MIN_LEASE_MS:
        raise BadValue(f"too short: leases are renewed every third of it ({value // 3} ms), which leaves no room for "
                       f"a store round trip, and a holder must stop its sockets 2/3 of a lease after its last "
                       f"renewal; expected at least {MIN_LEASE_MS} ms")
    return value


def positive_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadValue("expected a positive number") from None
    if not (value > 0 and value != float("inf")):
        raise BadValue("expected a positive number")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise BadValue("expected one of " + "/".join(choices))
        return value

    return parse


def non_empty(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise BadValue("expected a non-empty value")
    return value


def transport(raw: str) -> str:
    value = raw.strip()
    if value == "neonize":
        return value
    if value.startswith("sim://"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.hostname and port:
            return value
    raise BadValue("expected 'neonize' or 'sim://host:port'")


def postgres_dsn(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("postgres://", "postgresql://")) or not urlsplit(value).hostname:
        raise BadValue("expected postgres://user:password@host:port/database")
    return value


def http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue("expected an http:// or https:// URL")
    return value


def host_port(raw: str) -> str:
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BadValue("expected host:port")
    return value


def _range_text(what: str, lo: int, hi: Optional[int]) -> str:
    return f"expected {what} from {lo} to {hi}" if hi is not None else f"expected {what} >= {lo}"


# --- the table --------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    field: str
    names: tuple[str, ...]  # preferred first, then legacy aliases; the first one set wins
    parse: Callable[[str], Any]
    default: Any  # a value, or a callable(settings_so_far) for derived defaults
    secret: bool = False
    help: str = ""


def _default_instance_id(_: dict) -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _default_sessions_path(values: dict) -> str:
    return str(Path(values["data_dir"]) / "sessions")


# Order matters only for derived defaults (data_dir before sessions_path).
VARIABLES: tuple[Var, ...] = (
    Var("port", ("PORT",), int_in(1, 65535), 8080, help="HTTP listen port"),
    Var("host", ("HOST",), non_empty, "127.0.0.1", help="HTTP listen address"),
    Var("instance_id", ("INSTANCE_ID",), non_empty, _default_instance_id, help="lock holder id"),
    Var("admin_token", ("ADMIN_TOKEN",), non_empty, None, secret=True, help="bearer token for admin endpoints"),
    Var("data_dir", ("WASYNC_DATA_DIR",), non_empty, "./data", help="embedded store, spool"),
    Var("sessions_path", ("SESSIONS_PATH",), non_empty, _default_sessions_path, help="session stores"),
    Var("sessions_dsn", ("SESSIONS_DSN",), postgres_dsn, None, secret=True, help="shared PostgreSQL session store"),
    Var("transport", ("WASYNC_TRANSPORT",), transport, "neonize", help="neonize or sim://host:port"),
    Var("sim_registration_ms", ("WASYNC_SIM_REGISTRATION_MS",), int_in(0, 60_000), 0,
        help="sim transport only: connects take turns, each this long, as neonize's registrations do "
             "(~1,000 against WhatsApp): cold-start benchmarks"),
    Var("log_level", ("LOG_LEVEL",), one_of("debug", "info", "warning", "error"), "info"),
    Var("log_format", ("LOG_FORMAT",), one_of("text", "json"), "text",
        help="json: one JSON object per line (journald, Loki), with the [tag] and key=value figures as fields"),
    Var("max_starts_per_second", ("WASYNC_MAX_STARTS_PER_SECOND",), positive_float, 5.0),
    Var("lease_ms", ("WASYNC_LEASE_MS",), lease_ms, 15000, help="socket-ownership lease"),
    Var("store", ("WASYNC_STORE",), one_of("sqlite", "firestore"), "sqlite"),
    Var("google_cloud_project", ("GOOGLE_CLOUD_PROJECT",), non_empty, None),
    Var("google_application_credentials", ("GOOGLE_APPLICATION_CREDENTIALS",), non_empty, None),
    Var("firebase_service_account_json", ("FIREBASE_SERVICE_ACCOUNT_JSON",), non_empty, None, secret=True),
    Var("firestore_emulator_host", ("FIRESTORE_EMULATOR_HOST",), host_port, None),
    Var("sync_full_history", ("WHATSAPP_SYNC_FULL_HISTORY",), parse_bool, True),
    # Asked of the phone at pairing, with WHATSAPP_SYNC_FULL_HISTORY only; the phone decides.
    Var("history_sync_days", ("WHATSAPP_HISTORY_SYNC_DAYS",), int_in(1), 3650,
        help="days of history a full initial sync asks for (HistorySyncConfig.fullSyncDaysLimit)"),
    Var("history_sync_size_mb", ("WHATSAPP_HISTORY_SYNC_SIZE_MB",), int_in(1), 102400,
        help="size limit a full initial sync asks for, MB (HistorySyncConfig.fullSyncSizeMbLimit)"),
    Var("history_sync_dry_run", ("WHATSAPP_HISTORY_SYNC_DRY_RUN",), parse_bool, False),
    # auto_backfill_enabled is combined from two switches below (off if either is false).
    Var("backfill_interval_ms",
        ("WHATSAPP_BACKFILL_INTERVAL_SECONDS", "AUTO_BACKFILL_INTERVAL_MS"),
        (duration_ms(1000), duration_ms(1)), 720_000),
    Var("backfill_cooldown_ms",
        ("WHATSAPP_BACKFILL_COOLDOWN_MINUTES", "AUTO_BACKFILL_COOLDOWN_SUCCESS_MS"),
        (duration_ms(60_000, 0), duration_ms(1, 0)), 360 * 60_000),
    Var("auto_backfill_attempt_backoff_ms", ("AUTO_BACKFILL_ATTEMPT_BACKOFF_MS",), duration_ms(1, 0), 600_000),
    Var("auto_backfill_lease_ms", ("AUTO_BACKFILL_LEASE_MS",), duration_ms(1, 1000), 900_000),
    Var("auto_backfill_max_accounts_per_tick", ("AUTO_BACKFILL_MAX_ACCOUNTS_PER_TICK",), int_in(1), 3),
    Var("backfill_concurrency",
        ("WHATSAPP_BACKFILL_CONCURRENCY", "AUTO_BACKFILL_MAX_CONCURRENCY"), int_in(1, 64), 2),
    Var("backfill_threads", ("WHATSAPP_BACKFILL_THREADS",), int_in(1), 50),
    Var("backfill_count", ("WHATSAPP_BACKFILL_COUNT",), int_in(1), 100),
    Var("backfill_messages_per_thread", ("WHATSAPP_BACKFILL_MESSAGES_PER_THREAD",), int_in(1, 50), 20),
    Var("backfill_max_days", ("WHATSAPP_BACKFILL_MAX_DAYS",), int_in(1), None),
    Var("recent_sync_enabled", ("RECENT_SYNC_ENABLED",), parse_bool, True),
    Var("recent_sync_interval_ms", ("RECENT_SYNC_INTERVAL_MS",), duration_ms(1, 1000), 120_000),
    Var("recent_sync_lookback_ms", ("RECENT_SYNC_LOOKBACK_MS",), duration_ms(1), 21_600_000),
    Var("recent_sync_max_threads", ("RECENT_SYNC_MAX_THREADS",), int_in(1), 30),
    Var("recent_sync_max_messages_per_thread", ("RECENT_SYNC_MAX_MESSAGES_PER_THREAD",), int_in(1, 50), 20),
    Var("recent_sync_max_concurrency", ("RECENT_SYNC_MAX_CONCURRENCY",), int_in(1, 64), 1),
    Var("recent_sync_lease_ms", ("RECENT_SYNC_LEASE_MS",), duration_ms(1, 1000), 300_000),
    Var("auto_repair_threads_enabled", ("AUTO_REPAIR_THREADS_ENABLED",), parse_bool, True),
    Var("auto_repair_threads_limit_per_run", ("AUTO_REPAIR_THREADS_LIMIT_PER_RUN",), int_in(1), 200),
    Var("auto_repair_cooldown_ms", ("AUTO_REPAIR_COOLDOWN_MINUTES",), duration_ms(60_000, 0), 60 * 60_000),
    Var("degraded_after_ms", ("WHATSAPP_DEGRADED_AFTER_MS",), duration_ms(1, 1000), 300_000),
    Var("repair_alert_webhook_url", ("REPAIR_ALERT_WEBHOOK_URL",), http_url, None, secret=True),
    Var("admin_rate_per_minute", ("WASYNC_ADMIN_RATE_PER_MINUTE",), int_in(1), 600,
        help="mutating admin requests (POST, DELETE) a minute per token, in bursts of ten seconds' worth"),
    Var("outbox_poll_ms", ("WASYNC_OUTBOX_POLL_SECONDS",), duration_ms(1000, 100), 10_000,
        help="how often a connected account looks for outbox items queued through another instance "
             "(sends through this instance's API start at once)"),
    Var("outbox_expire_ms", ("WASYNC_OUTBOX_EXPIRE_MINUTES",), duration_ms(60_000, 60_000), 24 * 60 * 60_000,
        help="an outbox item not sent this long after it was queued fails instead (no day-old surprises)"),
    Var("hung_after_ms", ("WASYNC_HUNG_AFTER_MS",), duration_ms(1, 1000), 30_000,
        help="an account actor that has not answered the supervisor's liveness ask this long is replaced"),
    Var("debug_faults", ("WASYNC_DEBUG_FAULTS",), parse_bool, False,
        help="enable POST /api/admin/debug/fault (fault injection for tests; never in production)"),
    # Set by systemd for a Type=notify unit (sd_notify(3)), not by operators: runtime/sdnotify.py.
    Var("notify_socket", ("NOTIFY_SOCKET",), non_empty, None,
        help="set by systemd: where READY=1, STATUS, STOPPING=1 and WATCHDOG=1 go"),
    Var("watchdog_usec", ("WATCHDOG_USEC",), int_in(1), None,
        help="set by systemd (WatchdogSec=): ping at least every half of it"),
    Var("watchdog_pid", ("WATCHDOG_PID",), int_in(1), None,
        help="set by systemd: the process WATCHDOG_USEC is meant for (others do not ping)"),
)

AUTO_BACKFILL_SWITCHES = ("WHATSAPP_AUTO_BACKFILL_ENABLED", "AUTO_BACKFILL_ENABLED")


@dataclass(frozen=True)
class Settings:
    port: int
    host: str
    instance_id: str
    admin_token: Optional[str]
    data_dir: str
    sessions_path: str
    sessions_dsn: Optional[str]
    transport: str
    sim_registration_ms: int
    log_level: str
    log_format: str
    max_starts_per_second: float
    lease_ms: int
    store: str
    google_cloud_project: Optional[str]
    google_application_credentials: Optional[str]
    firebase_service_account_json: Optional[str]
    firestore_emulator_host: Optional[str]
    sync_full_history: bool
    history_sync_days: int
    history_sync_size_mb: int
    history_sync_dry_run: bool
    auto_backfill_enabled: bool
    backfill_interval_ms: int
    backfill_cooldown_ms: int
    auto_backfill_attempt_backoff_ms: int
    auto_backfill_lease_ms: int
    auto_backfill_max_accounts_per_tick: int
    backfill_concurrency: int
    backfill_threads: int
    backfill_count: int
    backfill_messages_per_thread: int
    backfill_max_days: Optional[int]
    recent_sync_enabled: bool
    recent_sync_interval_ms: int
    recent_sync_lookback_ms: int
    recent_sync_max_threads: int
    recent_sync_max_messages_per_thread: int
    recent_sync_max_concurrency: int
    recent_sync_lease_ms: int
    auto_repair_threads_enabled: bool
    auto_repair_threads_limit_per_run: int
    auto_repair_cooldown_ms: int
    degraded_after_ms: int
    repair_alert_webhook_url: Optional[str]
    admin_rate_per_minute: int
    outbox_poll_ms: int
    outbox_expire_ms: int
    hung_after_ms: int
    debug_faults: bool
    notify_socket: Optional[str]
    watchdog_usec: Optional[int]
    watchdog_pid: Optional[int]
    # where each field's value came from: "default", "env NAME" or "legacy NAME"
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def lease_renew_ms(self) -> int:
        return self.lease_ms // 3

    @property
    def sim_address(self) -> Optional[tuple[str, int]]:
        if not self.transport.startswith("sim://"):
            return None
        parts = urlsplit(self.transport)
        return parts.hostname, parts.port

    @property
    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def require_serving(self) -> None:
        """Checks that only matter for a daemon that listens (not for `wasync config`)."""
        if not self.host_is_loopback and not self.admin_token:
            raise ConfigError([f"ADMIN_TOKEN: not set, but HOST={self.host!r} is not loopback; "
                               "set ADMIN_TOKEN to expose the admin API beyond this machine"])
        if self.store == "firestore" and self.firestore_emulator_host and not self.google_cloud_project:
            raise ConfigError(["GOOGLE_CLOUD_PROJECT: not set; it is required with FIRESTORE_EMULATOR_HOST"])

    def source_of(self, field_name: str) -> str:
        return dict(self.sources).get(field_name, "default")


def load(environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Read every variable from `environ` (default: the process environment)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for var in VARIABLES:
        parsers = var.parse if isinstance(var.parse, tuple) else (var.parse,) * len(var.names)
        for index, (name, parse) in enumerate(zip(var.names, parsers)):
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[var.field] = parse(raw)
                sources[var.field] = ("env " if index == 0 else "legacy ") + name
            except BadValue as exc:
                problems.append(f"{name}={_quote(raw, var.secret)}: {exc}")
                values[var.field] = None
            break
        else:
            values[var.field] = var.default(values) if callable(var.default) else var.default
            sources[var.field] = "default"

    switches = []
    for name in AUTO_BACKFILL_SWITCHES:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            switches.append((name, parse_bool(raw)))
        except BadValue as exc:
            problems.append(f"{name}={_quote(raw, False)}: {exc}")
    disabled_by = [name for name, on in switches if not on]
    values["auto_backfill_enabled"] = not disabled_by
    if disabled_by:
        sources["auto_backfill_enabled"] = "env " + disabled_by[0]
    elif switches:
        sources["auto_backfill_enabled"] = "env " + switches[0][0]
    else:
        sources["auto_backfill_enabled"] = "default"

    if problems:
        raise ConfigError(problems)
    return Settings(**values, sources=tuple(sorted(sources.items())))


def _quote(raw: str, secret: bool) -> str:
    return "'***'" if secret else repr(raw)


def mask(field_name: str, value: Any) -> str:
    """A value as `wasync config` shows it: secrets hidden, URLs without passwords."""
    if value is None:
        return "(unset)"
    secret = next((v.secret for v in VARIABLES if v.field == field_name), False)
    if not secret:
        return str(value)
    if field_name == "sessions_dsn":
        parts = urlsplit(value)
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{parts.username}:***@{netloc}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if field_name == "repair_alert_webhook_url":
        parts = urlsplit(value)
        return urlunsplit((parts.scheme, parts.hostname or "", "/***", "", ""))
    return "***"


def describe(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(variable names, field, shown value, source) for every setting."""
    rows = []
    names = {v.field: "/".join(v.names) for v in VARIABLES}
    names["auto_backfill_enabled"] = "/".join(AUTO_BACKFILL_SWITCHES)
    for f in fields(Settings):
        if f.name == "sources":
            continue
        rows.append((names[f.name], f.name, mask(f.name, getattr(settings, f.name)), settings.source_of(f.name)))
    return rows


def print_config(environ: Optional[Mapping[str, str]] = None, out=None) -> int:
    out = out or sys.stdout
    try:
        settings = load(environ)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"wasync: bad setting: {line}", file=sys.stderr)
        return 2
    rows = describe(settings)
    width = max(len(r[0]) for r in rows)
    for names, field_name, shown, source in rows:
        print(f"{names.ljust(width)}  {field_name}={shown}  [{source}]", file=out)
    return 0


# --- the environment neonize's Go library reads ------------------------------------

# goneonize (neonize 0.5.2) appends <bot biz_bot="1"/> to every 1:1 send unless this is
# "off" (or none/false/0): the account's own messages would go out marked as a bot's.
NEONIZE_BOT_TAG = "NEONIZE_BOT_TAG"
_BOT_TAG_OFF = {"off", "none", "false", "0"}


def prepare_neonize_environment() -> Optional[bool]:
    """Put NEONIZE_BOT_TAG=off into the environment (unless set) and say whether neonize's
    Go library will actually see it. The neonize transport calls this before it imports
    neonize; it lives here because this is the only module that touches os.environ.

    Caveat, measured on Linux with neonize 0.5.2: Go reads its environment once, from the
    block the process was *started* with. A variable put into os.environ later — even
    before neonize is imported — never reaches it (HTTPS_PROXY set that way did not change
    how Go dialled; the same variable in the starting environment did). So this
    setdefault only reaches processes started from here; the daemon itself needs
    NEONIZE_BOT_TAG=off in its unit / env file. Returns True when the starting environment
    turns the tag off, False when it does not, None when that cannot be known (no
    /proc/self/environ)."""
    os.environ.setdefault(NEONIZE_BOT_TAG, "off")
    try:
        with open("/proc/self/environ", "rb") as handle:
            block = handle.read()
    except OSError:
        return None
    for entry in block.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name.decode(errors="replace") == NEONIZE_BOT_TAG:
            return value.decode(errors="replace").strip().lower() in _BOT_TAG_OFF
    return False


def reexec_for_neonize(argv: list[str]) -> None:
    """Start this command again with NEONIZE_BOT_TAG=off in its starting environment when
    it is missing there (Go only reads that block; see above). Returns only when no
    re-exec is needed or possible; a second run never re-execs again."""
    if prepare_neonize_environment() is not False or os.environ.get("WASYNC_REEXECED") == "1":
        return
    os.environ["WASYNC_REEXECED"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "wasync.runtime.cli", *argv])
