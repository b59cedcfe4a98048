"""The bench's measuring rig: one simulator and one daemon as processes (`Rig`), their
figures read from /proc, /metrics and the store itself, and the waits between steps.
Shared by the phases of bench/pipeline.py."""
from __future__ import annotations

import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from daemonproc import DaemonProcess  # noqa: E402
from simproc import SimProcess  # noqa: E402

MiB = 1024 * 1024
# The admin API's rate limit (600 changes a minute) would refuse 500 adds in a row.
BENCH_ADMIN_RATE = 1_000_000


def log(*args) -> None:
    print("[pipeline]", *args, file=sys.stderr, flush=True)


def phone(i: int) -> str:
    return f"1999{i:07d}"


def account_id(i: int) -> str:
    return f"bench{i:04d}"


class PhaseTimeout(RuntimeError):
    pass


def poll(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05,
         progress: Optional[Callable[[float], None]] = None, progress_every_s: float = 2.0) -> Any:
    """Call `check` until it returns something truthy; `progress(elapsed)` now and then."""
    start = time.monotonic()
    last = start
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now - start > timeout_s:
            raise PhaseTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if progress and now - last >= progress_every_s:
            last = now
            progress(now - start)
        time.sleep(every_s)


# --- /proc ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --- histograms from /metrics --------------------------------------------------------


def scrape(daemon: DaemonProcess) -> dict[str, dict]:
    """Every histogram and counter of the daemon's /metrics: name -> {"buckets":
    [(le, cumulative)], "count", "sum"} for histograms, name -> {labels: value} otherwise."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = daemon.get("/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    text = body.decode() if isinstance(body, bytes) else str(body)
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            buckets, count, total = [], 0.0, 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
            out[family.name] = {"buckets": sorted(buckets), "count": count, "sum": total}
        else:
            out[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples
                                if not s.name.endswith("_created")}
    return out


def hist_delta(after: dict, before: dict) -> dict:
    old = dict(before["buckets"])
    return {"buckets": [(le, c - old.get(le, 0.0)) for le, c in after["buckets"]],
            "count": after["count"] - before["count"], "sum": after["sum"] - before["sum"]}


def quantile(q: float, hist: dict) -> tuple[Optional[float], str]:
    """histogram_quantile: linear interpolation inside the bucket that holds rank q*n
    (the first bucket starts at 0). Returns (seconds, note); the note says when the rank
    is in the +Inf bucket (then the value is only a lower bound)."""
    buckets = hist["buckets"]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None, "no observations"
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le, f"above the top bucket ({prev_le:g} s): lower bound"
            if c == prev_c:
                return le, ""
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), \
                f"bucket {prev_le:g}-{le:g} s"
        prev_le, prev_c = le, c
    return None, "no observations"


def _ms(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.3f} ms"


def hist_summary(hist: dict) -> str:
    parts = []
    prev = 0.0
    for le, c in hist["buckets"]:
        if c - prev:
            parts.append(f"<={le:g}s:{int(c - prev)}")
        prev = c
    mean = hist["sum"] / hist["count"] if hist["count"] else float("nan")
    return f"n={int(hist['count'])} mean={mean * 1000:.2f} ms  " + " ".join(parts)


# --- the store, read from the bench process ------------------------------------------


class StoreReader:
    """Counts messages in the daemon's store (SQLite file or Firestore emulator)."""

    def __init__(self, kind: str, data_dir: Path, project: Optional[str] = None):
        self.kind = kind
        self.data_dir = data_dir
        self.project = project
        self._conn: Optional[sqlite3.Connection] = None
        self._db = None

    def _sqlite(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.data_dir / "wasync.db", isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA query_only=1")
        return self._conn

    def _firestore(self):
        if self._db is None:
            from google.cloud import firestore

            self._db = firestore.Client(project=self.project)
        return self._db

    def messages(self, source: Optional[str] = None) -> int:
        if self.kind == "sqlite":
            if source is None:
                return self._sqlite().execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            return self._sqlite().execute("SELECT COUNT(*) FROM messages WHERE json_extract(doc, '$.syncSource') = ?",
                                          (source,)).fetchone()[0]
        from google.cloud import firestore

        query = self._firestore().collection_group("messages")
        if source is not None:
            query = query.where(filter=firestore.FieldFilter("syncSource", "==", source))
        return int(query.count().get()[0][0].value)

    def live_latencies_ms(self) -> list[float]:
        """SQLite only: createdAt (flush start, store time) - tsClientMs (the simulator's
        clock when it made the message) of every realtime message: an end-to-end
        cross-check that includes the simulator -> daemon hop the histograms miss."""
        if self.kind != "sqlite":
            return []
        rows = self._sqlite().execute(
            "SELECT json_extract(doc, '$.createdAt.\"$ts\"') - json_extract(doc, '$.tsClientMs') FROM messages "
            "WHERE json_extract(doc, '$.syncSource') = 'realtime'").fetchall()
        return [float(r[0]) for r in rows if r[0] is not None]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._db is not None:
            self._db.close()


def spool_depth(data_dir: Path) -> int:
    """Exact, read from the spool files (/diag's figure is refreshed only every 2 s)."""
    return sum(_one(path, "SELECT COUNT(*) FROM events")[0] for path in _spool_files(data_dir))


def spool_backlog(data_dir: Path) -> tuple[int, int, dict[Path, int]]:
    """(rows, Message rows, last seq of each spool file) the spool files hold now."""
    rows = msgs = 0
    last: dict[Path, int] = {}
    for path in _spool_files(data_dir):
        n, m, last[path] = _one(path, "SELECT COUNT(*), COALESCE(SUM(kind = 'Message'), 0), COALESCE(MAX(seq), 0) "
                                      "FROM events")
        rows, msgs = rows + n, msgs + m
    return rows, msgs, last


def spool_left(last: dict[Path, int]) -> int:
    """How many of the rows up to `last` (spool_backlog's) are not done yet."""
    return sum(_one(path, "SELECT COUNT(*) FROM events WHERE seq <= ?", top)[0] for path, top in last.items())


def _spool_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spool").glob("*.db"))


def _one(path: Path, sql: str, *args) -> tuple:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        return conn.execute(sql, args).fetchone()
    finally:
        conn.close()


# --- one simulator + one daemon ------------------------------------------------------


class Rig:
    """A simulator with `world` and a daemon against it, in a fresh directory; both are
    stopped on exit whatever happened (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, world: dict, args, emulator_host: Optional[str],
                 env: Optional[dict[str, str]] = None):
        self.name = name
        self.extra_env = env or {}
        self.world = world
        self.args = args
        self.emulator_host = emulator_host
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wasync-bench-{name}-"))
        self.project = f"bench-{name}-{time.time_ns()}" if args.store == "firestore" else None
        self.sim: Optional[SimProcess] = None
        self.daemon: Optional[DaemonProcess] = None
        self.reader: Optional[StoreReader] = None
        self.failed = False

    def __enter__(self) -> "Rig":
        try:
            self.start()
        except BaseException:
            self.failed = True
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.failed = self.failed or exc_type is not None
        self.close()

    def start(self) -> None:
        accounts = len(self.world["accounts"])
        log(f"{self.name}: starting wasync sim ({accounts} accounts) in {self.workdir}")
        started = time.monotonic()
        self.sim = SimProcess(self.world, self.workdir / "sim", speed=1.0).start(timeout_s=180)
        log(f"{self.name}: simulator up on port {self.sim.port} after {time.monotonic() - started:.1f} s")
        env = {"WASYNC_TRANSPORT": self.sim.address,
               "WASYNC_MAX_STARTS_PER_SECOND": str(self.args.starts_per_second),
               "WASYNC_ADMIN_RATE_PER_MINUTE": str(BENCH_ADMIN_RATE),
               "LOG_LEVEL": self.args.daemon_log_level, **self.extra_env}
        if self.args.store == "firestore":
            env.update(WASYNC_STORE="firestore", FIRESTORE_EMULATOR_HOST=self.emulator_host,
                       GOOGLE_CLOUD_PROJECT=self.project)
        self.env = env
        self.daemon = DaemonProcess(self.workdir / "daemon", env).start(timeout_s=60)
        self.data_dir = self.workdir / "daemon" / "data"
        self.reader = StoreReader(self.args.store, self.data_dir, self.project)
        log(f"{self.name}: wasync run up (pid {self.daemon.proc.pid}, port {self.daemon.port}, "
            f"store {self.args.store}, WASYNC_MAX_STARTS_PER_SECOND={self.args.starts_per_second})")

    def restart(self) -> float:
        """Stop the daemon (SIGTERM) and run `wasync run` again on the same data; returns
        the moment the new process was started (time.monotonic)."""
        code = self.daemon.stop(timeout_s=60)
        if code != 0:
            raise RuntimeError(f"the daemon exited {code} on SIGTERM")
        started = time.monotonic()
        self.daemon = DaemonProcess(self.workdir / "daemon", self.env).start(timeout_s=60)
        return started

    def close(self) -> None:
        if self.reader:
            try:
                self.reader.close()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log(f"{self.name}: closing the store reader: {exc}")
        if self.daemon and self.daemon.proc and self.daemon.proc.poll() is None:
            log(f"{self.name}: stopping the daemon (SIGTERM)")
            try:
                code = self.daemon.stop(timeout_s=60)
                if code != 0:
                    log(f"{self.name}: the daemon exited {code}; log tail:\n{self.daemon.tail(2000)}")
            except AssertionError:
                log(f"{self.name}: the daemon ignored SIGTERM for 60 s and was killed")
                self.failed = True
            except BaseException:
                self.daemon.kill()
                raise
        if self.sim and self.sim.proc and self.sim.proc.poll() is None:
            try:
                self.sim.stop()
            except BaseException:
                if self.sim.proc.poll() is None:
                    self.sim.proc.kill()
                raise
        if self.failed or self.args.keep:
            log(f"{self.name}: logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------

    def add_accounts(self, phones: list[str], workers: int = 8, first: int = 0) -> float:
        """POST /api/whatsapp/accounts for each phone (account ids from number `first` on);
        returns the seconds it took."""
        started = time.monotonic()
        done = [0]

        def add(i: int) -> None:
            status, body = self.daemon.request("POST", "/api/whatsapp/accounts",
                                               {"accountId": account_id(first + i), "phone": phones[i]})
            if status != 201:
                raise RuntimeError(f"adding {account_id(first + i)}: HTTP {status} {body}")
            done[0] += 1
            if len(phones) >= 100 and done[0] % 100 == 0:
                log(f"{self.name}: {done[0]}/{len(phones)} accounts added")

        with ThreadPoolExecutor(max_workers=min(workers, len(phones))) as pool:
            list(pool.map(add, range(len(phones))))
        return time.monotonic() - started

    def connected(self) -> int:
        status, body = self.daemon.get("/api/whatsapp/accounts")
        if status != 200:
            return 0
        return sum(1 for a in body["accounts"] if a.get("connected"))

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.daemon.proc.pid), cpu_seconds(self.sim.proc.pid)


def small_world(accounts: int, chats: int, per_chat: int) -> dict:
    return {"seed": 11, "accounts": [
        {"phone": phone(i), "paired": True, "initialSyncPerChat": per_chat,
         "generate": {"chats": chats, "messagesPerChat": per_chat}} for i in range(accounts)]}


class PhaseStalled(PhaseTimeout):
    pass


def settle(rig: Rig, accounts: int, history: int, timeout_s: float, stall_s: float) -> None:
    """Every account connected, its history stored, the spool empty. Raises PhaseStalled
    when nothing moved for `stall_s` (and PhaseTimeout after `timeout_s`)."""
    state: dict[str, int] = {}
    moved: list[Any] = [time.monotonic(), None]

    def ready() -> bool:
        state.update(connected=rig.connected(), stored=rig.reader.messages(), depth=spool_depth(rig.data_dir))
        key = tuple(state.values())
        if key != moved[1]:
            moved[:] = [time.monotonic(), key]
        elif time.monotonic() - moved[0] > stall_s:
            raise PhaseStalled(f"no progress for {stall_s:.0f} s: {state['connected']}/{accounts} accounts "
                               f"connected, {state['stored']}/{history} history messages stored, "
                               f"spool depth {state['depth']}")
        return state["connected"] >= accounts and state["stored"] >= history and state["depth"] == 0

    def progress(elapsed: float) -> None:
        log(f"{rig.name}: {state.get('connected')}/{accounts} connected, {state.get('stored')}/{history} history "
            f"messages stored, spool depth {state.get('depth')} after {elapsed:.0f} s")

    poll(ready, timeout_s, f"{accounts} accounts connected and {history} messages stored", every_s=0.5,
         progress=progress)


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(math.ceil(q * len(values))) - 1))]


def sample_rss(pid: int, samples: int = 5, every_s: float = 0.5) -> int:
    values = []
    for i in range(samples):
        values.append(rss_bytes(pid))
        if i + 1 < samples:
            time.sleep(every_s)
    return int(statistics.median(values))
