"""Pipeline benchmark: simulated WhatsApp -> `wasync run` -> store, as real processes.

Three figures, measured in one run, each phase with its own simulator (`wasync sim`) and
daemon (`wasync run`, embedded SQLite store unless `--store firestore`):

  ingest   history sync end to end. A world of accounts with a `generate` block and an
           initialSyncPerChat that sends all of it (default 10 x 20 chats x 500 = 100,000
           messages). Timed from the first admin API call that adds an account
           (POST /api/whatsapp/accounts) until the store holds every history message
           (counted in the store itself). Raw ceiling: the same number of messages
           over as many chats, written with the store client's plain batched writes
           (bench/store_ingest.py's functions) in the same run, chat by chat as history
           sync delivers them (see `raw_ceiling`). Target: ingest / raw >= 0.5 (SQLite),
           >= 0.8 (Firestore emulator).
  latency  realtime: 50 accounts x 2 msgs/s of simulator `traffic` for 30 s (speed 1),
           the accounts' traffic starts staggered over one inter-message interval so
           the 100 msgs/s arrive evenly rather than in bursts of 50. p99 of the daemon's
           own histograms wasync_event_to_spool_seconds (transport callback -> spool
           append) and wasync_event_to_store_seconds (spool append -> store flush done),
           taken as the difference of two /metrics scrapes around the traffic and
           *estimated from the buckets* by linear interpolation (Prometheus'
           histogram_quantile). Targets: spool p99 <= 5 ms, store p99 <= 1 s.
  hol      realtime behind a history burst: `--latency-accounts` live accounts at
           `--latency-rate` msgs/s while `--hol-big` other accounts (default 10) are added
           and ingest `--hol-history` history messages each (default 20,000). p99 of
           realtime event -> stored, from the store (createdAt - the simulator's message
           time) for the live messages, and the daemon's own spool -> store histogram
           over the burst. Target: <= 1 s.
  outage   the store unreachable for `--outage-seconds` (default 60; SQLite: the bench
           holds an exclusive lock on the store file) under the latency phase's traffic:
           RSS during the outage (flat: the backlog is not in memory), and the rate at
           which the outage's messages are stored once it is back, as a ratio of the
           ingest phase's rate. Target >= 0.5. Run twice. With the default lease the
           sessions stop 2/3 of a lease into the outage (lease safety), so most of the
           backlog waits at WhatsApp until they reconnect; the rows the spool held are
           also timed on their own (until every one is written and done). Then with a
           lease longer than the outage (WASYNC_LEASE_MS = 2 x outage + 15 s): the
           sockets stay up, the spool takes every message, and the drain is the
           daemon's own (keys outage_long_lease_*).
  instances  cold start when connects take turns per process, as neonize registers
           one client at a time (WASYNC_SIM_REGISTRATION_MS=`--registration-ms`, default
           200; against WhatsApp ~1,000): `--instances-accounts` (100) accounts on 1, 2 and
           4 instances sharing one data dir, seconds from `wasync run` until the simulator
           sees all connected.
  rss      daemon VmRSS (/proc/PID/status) with 0 accounts just after start and with
           500 small simulated accounts all connected and idle for a few seconds;
           (rss500 - rss0) / 500. Target <= 2 MiB per account. If the accounts stop
           connecting (nothing moves for `--stall` s) the phase fails: the RSS at that
           point is logged, the figure is n/a (null) and the exit status is 1.
           Then the cold start: SIGTERM, `wasync run` again on the same data, seconds
           until all 500 are connected. Target <= 15 s.

Accounts start paced by WASYNC_MAX_STARTS_PER_SECOND (default 5/s: 100 s for 500
accounts); the bench sets it to 100 (`--starts-per-second`) in every phase, so the
ingest clock measures the pipeline and not the start pacing.

Prints a table (figure, target, ratio); `--json` prints one JSON object with the keys
ingest_msgs_per_s, raw_msgs_per_s, one_by_one_msgs_per_s (Firestore), spool_p99_ms, store_p99_ms, hol_live_p99_ms,
hol_store_p99_ms, outage_drain_msgs_per_s, outage_spool_drain_msgs_per_s, outage_spool_drain_s,
outage_rss_growth_mib, outage_long_lease_drain_msgs_per_s, outage_long_lease_drain_s,
outage_long_lease_rss_growth_mib, rss_mib_per_account,
cold_start_s, instances_cold_start_s (null
for a phase not run or failed) and nothing else on stdout. Progress goes to stderr. Exit
status 1 if a phase failed. The default run takes about 5 minutes on 2 cores.

The phases live in bench/realtime_phases.py (latency, hol, outage) and
bench/startup_phases.py (instances, rss), ingest here; the measuring rig (a simulator
and a daemon as processes, /proc, /metrics, the store) in bench/rig.py and the raw
ceilings in bench/ceilings.py.

Usage: python bench/pipeline.py [--only ingest|latency|hol|outage|rss|instances] [--quick] [--json]
       [--store sqlite|firestore] [--emulator HOST:PORT] [--ingest-accounts 10]
       [--ingest-chats 20] [--ingest-messages-per-chat 500] [--latency-accounts 50]
       [--latency-rate 2] [--latency-seconds 30] [--rss-accounts 500] [--keep]
       [--starts-per-second 100] [--stall 30] [--timeout 180]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import raw_ceiling  # noqa: E402
from store_ingest import warm_emulator  # noqa: E402
from realtime_phases import phase_hol, phase_latency, phase_outage  # noqa: E402
from rig import (PhaseStalled, PhaseTimeout, Rig, hist_delta, log, phone, poll, scrape,  # noqa: E402
                 spool_depth)
from startup_phases import phase_instances, phase_rss  # noqa: E402

TARGETS = {"ingest_ratio": 0.5, "spool_p99_ms": 5.0, "store_p99_ms": 1000.0, "rss_mib_per_account": 2.0,
           "hol_live_p99_ms": 1000.0, "hol_store_p99_ms": 1000.0}
INGEST_RATIO = {"sqlite": 0.5, "firestore": 0.8}  # issue 16's targets, per store


# --- phase 1: history ingest ---------------------------------------------------------


def ingest_world(args) -> tuple[dict, int]:
    per_chat = min(args.ingest_sync_per_chat, args.ingest_messages_per_chat)
    world = {"seed": 7, "accounts": [
        {"phone": phone(i), "pushName": f"Bench {i}", "paired": True,
         "initialSyncPerChat": args.ingest_sync_per_chat,
         "generate": {"chats": args.ingest_chats, "messagesPerChat": args.ingest_messages_per_chat}}
        for i in range(args.ingest_accounts)]}
    return world, args.ingest_accounts * args.ingest_chats * per_chat


def phase_ingest(args, emulator_host: Optional[str]) -> dict:
    world, expected = ingest_world(args)
    log(f"ingest: {args.ingest_accounts} accounts x {args.ingest_chats} chats x "
        f"{min(args.ingest_sync_per_chat, args.ingest_messages_per_chat)} history messages = {expected}")
    if emulator_host:
        warm_emulator()  # as the ceilings measured after it are
    with Rig("ingest", world, args, emulator_host) as rig:
        phones = [a["phone"] for a in world["accounts"]]
        before = scrape(rig.daemon)
        cpu0 = rig.cpu()
        t0 = time.monotonic()
        added_s = rig.add_accounts(phones)
        log(f"ingest: {len(phones)} accounts added in {added_s:.2f} s; waiting for {expected} messages in the store")
        first: list[float] = []
        last_count = [0, t0]

        handed_at = [0.0, 0]  # when the daemon's count was last scraped, and what it said

        def stored_now() -> int:
            """SQLite: counted in the store. Firestore: a count on the emulator reads every
            document (seconds at 100,000, and emulator CPU taken from the writes measured),
            so the daemon's own account is used: messages handed to the store, while any
            spool row is left, minus one; with none left, every one was confirmed written
            (rows leave the spool only then). The count is checked once at the end.

            /metrics is scraped only when the spool is empty, or once a second for the
            progress line: rendering and parsing it 20 times a second took about a fifth
            of a core from the daemon and the emulator being measured."""
            if args.store == "sqlite":
                return rig.reader.messages()
            depth = spool_depth(rig.data_dir)
            if depth == 0 or time.monotonic() - handed_at[0] >= 1.0:
                handed = sum(v for labels, v in scrape(rig.daemon)["wasync_messages_ingested"].items()
                             if ("source", "history_sync") in labels)
                handed_at[:] = [time.monotonic(), int(handed)]
                # The count goes up when rows are read, before they are written: it is all
                # written only if the spool is still empty after the scrape.
                if depth == 0 and spool_depth(rig.data_dir) == 0:
                    return handed_at[1]
            return max(0, handed_at[1] - 1)

        def check() -> bool:
            n = stored_now()
            now = time.monotonic()
            if n and not first:
                first.append(now - t0)
            if n != last_count[0]:
                last_count[:] = [n, now]
            elif now - last_count[1] > args.stall:
                raise PhaseStalled(f"no progress for {args.stall:.0f} s at {n}/{expected} messages stored, "
                                   f"spool depth {spool_depth(rig.data_dir)}")
            return n >= expected

        def progress(elapsed: float) -> None:
            n = last_count[0]
            log(f"ingest: {n}/{expected} stored after {elapsed:.1f} s ({n / elapsed:.0f} msgs/s so far), "
                f"spool depth {spool_depth(rig.data_dir)}")

        poll(check, args.timeout, f"{expected} messages in the store",
             every_s=0.05, progress=progress)
        elapsed = time.monotonic() - t0
        cpu1 = rig.cpu()
        ours = expected / elapsed
        stored = rig.reader.messages()
        if stored < expected:
            raise RuntimeError(f"the store holds {stored} of the {expected} messages the daemon said it wrote")
        depth = poll(lambda: spool_depth(rig.data_dir) == 0 or None, 30, "an empty spool", every_s=0.1)
        after = scrape(rig.daemon)
        flush = hist_delta(after["wasync_store_flush_seconds"], before["wasync_store_flush_seconds"])
        batch = hist_delta(after["wasync_store_flush_batch_size"], before["wasync_store_flush_batch_size"])
        log(f"ingest: all {expected} history messages stored {elapsed:.2f} s after the first add "
            f"({ours:.0f} msgs/s); first message stored at {first[0] if first else float('nan'):.2f} s; "
            f"store now holds {stored}; spool empty: {bool(depth)}")
        log(f"ingest: CPU during ingest: daemon {cpu1[0] - cpu0[0]:.1f} s, simulator {cpu1[1] - cpu0[1]:.1f} s "
            f"over {elapsed:.1f} s wall ({os.cpu_count()} CPUs)")
        if flush["count"]:
            log(f"ingest: {int(flush['count'])} store flushes, {flush['sum']:.2f} s inside the store "
                f"({flush['sum'] / elapsed * 100:.0f}% of the wall time), mean batch "
                f"{batch['sum'] / max(1, batch['count']):.0f} ops")
        result = {"ingest_msgs_per_s": ours, "messages": expected, "seconds": elapsed,
                  "daemon_cpu_s": cpu1[0] - cpu0[0], "sim_cpu_s": cpu1[1] - cpu0[1],
                  "store_flush_s": flush["sum"]}
    raw, one = raw_ceiling(args, expected, args.ingest_accounts * args.ingest_chats, emulator_host)
    result["raw_msgs_per_s"], result["ratio"] = raw, result["ingest_msgs_per_s"] / raw
    if one is not None:
        result["one_by_one_msgs_per_s"] = one
    return result


# --- main ----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["ingest", "latency", "hol", "outage", "rss", "instances"], action="append",
                   help="run only this phase (repeatable)")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run of a minute or so)")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    p.add_argument("--store", choices=["sqlite", "firestore"], default="sqlite")
    p.add_argument("--emulator", help="with --store firestore: a running emulator at HOST:PORT")
    p.add_argument("--ingest-accounts", type=int, default=10)
    p.add_argument("--ingest-chats", type=int, default=20)
    p.add_argument("--ingest-messages-per-chat", type=int, default=500)
    p.add_argument("--ingest-sync-per-chat", type=int, help="initialSyncPerChat (default: all of them)")
    p.add_argument("--latency-accounts", type=int, default=50)
    p.add_argument("--latency-rate", type=float, default=2.0, help="traffic msgs/s per account")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--hol-big", type=int, default=10, help="hol: accounts ingesting history during live traffic")
    p.add_argument("--hol-history", type=int, default=20000, help="hol: history messages of each big account")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="outage: how long the store is unreachable")
    p.add_argument("--instances-accounts", type=int, default=100, help="instances: accounts to start")
    p.add_argument("--registration-ms", type=int, default=200,
                   help="instances: WASYNC_SIM_REGISTRATION_MS (neonize against WhatsApp: ~1,000)")
    p.add_argument("--instance-counts", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    p.add_argument("--rss-accounts", type=int, default=500)
    p.add_argument("--rss-idle", type=float, default=5.0, help="idle seconds before each RSS sample")
    p.add_argument("--starts-per-second", type=float, default=100.0, help="WASYNC_MAX_STARTS_PER_SECOND")
    p.add_argument("--no-raw-interleaved", dest="raw_interleaved", action="store_false",
                   help="skip the second raw SQLite run in store_ingest.py's interleaved order")
    p.add_argument("--stall", type=float, default=30.0,
                   help="give up a wait when nothing moved for this many seconds")
    p.add_argument("--daemon-log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--timeout", type=float, default=180.0, help="seconds each wait may take")
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs, databases)")
    args = p.parse_args(argv)
    if args.quick:
        args.ingest_accounts, args.ingest_chats, args.ingest_messages_per_chat = 2, 5, 200
        args.latency_accounts, args.latency_seconds = 10, 10.0
        args.rss_accounts, args.rss_idle = 50, 2.0
        args.hol_big, args.hol_history, args.outage_seconds = 2, 2_000, 20.0
        args.instances_accounts, args.instance_counts = 20, [1, 2]
    if args.ingest_sync_per_chat is None:
        args.ingest_sync_per_chat = args.ingest_messages_per_chat
    return args


def table(results: dict, store: str = "sqlite") -> str:
    rows = [("figure", "measured", "target", "ratio", "")]
    target_ratio = INGEST_RATIO[store]

    def row(name, value, unit, target_text, ratio, ok):
        shown = "n/a" if value is None else f"{value:,.{2 if value < 100 else 0}f} {unit}"
        rows.append((name, shown, target_text, "n/a" if ratio is None else f"{ratio:.2f}",
                     "" if ok is None else ("ok" if ok else "MISSED")))

    ing, raw = results.get("ingest_msgs_per_s"), results.get("raw_msgs_per_s")
    ratio = ing / raw if ing and raw else None
    row("history ingest, end to end", ing, "msgs/s", f">= {target_ratio} x raw", ratio,
        None if ratio is None else ratio >= target_ratio)
    row("raw ceiling (store client)", raw, "msgs/s", "(ceiling)", None, None)
    one = results.get("one_by_one_msgs_per_s")
    if one:
        row("one write per message (old path)", one, "msgs/s", ">= 10 x this", ing / one if ing else None,
            None if not ing else ing / one >= 10)
    for key, name in (("spool_p99_ms", "event->spool p99 (bucket-est.)"),
                      ("store_p99_ms", "event->store p99 (bucket-est.)"),
                      ("hol_live_p99_ms", "live p99 during history burst"),
                      ("hol_store_p99_ms", "  same, spool->store (bucket-est.)")):
        v = results.get(key)
        row(name, v, "ms", f"<= {TARGETS[key]:g} ms", None if v is None else v / TARGETS[key],
            None if v is None else v <= TARGETS[key])
    def drain_row(name: str, key: str) -> None:
        v, ing = results.get(key), results.get("ingest_msgs_per_s")
        ratio = v / ing if v and ing else None
        row(name, v, "msgs/s", ">= 0.5 x ingest", ratio, None if ratio is None else ratio >= 0.5)

    drain_row("backlog drain after a store outage", "outage_drain_msgs_per_s")
    drain_row("  of it, the spool's rows (no reconnect)", "outage_spool_drain_msgs_per_s")
    row("  RSS growth during the outage", results.get("outage_rss_growth_mib"), "MiB", "flat", None, None)
    drain_row("  same, lease > outage (sockets stay up)", "outage_long_lease_drain_msgs_per_s")
    row("    RSS growth during that outage", results.get("outage_long_lease_rss_growth_mib"), "MiB", "flat", None, None)
    v = results.get("cold_start_s")
    row("cold start, 500 accounts", v, "s", "<= 15 s", None if v is None else v / 15, None if v is None else v <= 15)
    for k, seconds in (results.get("instances_cold_start_s") or {}).items():
        one = (results.get("instances_cold_start_s") or {}).get("1")
        row(f"cold start, serialized connects, {k} inst.", seconds, "s", "(1 inst.) / k", None if not one else
            seconds / one, None)
    v = results.get("rss_mib_per_account")
    row("daemon RSS per account", v, "MiB", f"<= {TARGETS['rss_mib_per_account']:g} MiB",
        None if v is None else v / TARGETS["rss_mib_per_account"],
        None if v is None else v <= TARGETS["rss_mib_per_account"])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.append(f"ratio: ingest/raw (target >= {target_ratio}); otherwise measured/target (target <= 1). "
                 "p99s are interpolated within the daemon's histogram buckets.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    phases = args.only or ["ingest", "latency", "hol", "outage", "rss", "instances"]

    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # run every finally: processes are stopped

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {}
    errors: list[str] = []
    notes: list[str] = []
    emulator = None
    emulator_host = args.emulator
    started = time.monotonic()
    try:
        if args.store == "firestore" and not emulator_host:
            from emulator import FirestoreEmulator

            log("starting the Firestore emulator …")
            emulator = FirestoreEmulator().start()
            emulator_host = emulator.host
        if args.store == "firestore":
            os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
        for name, run in (("ingest", phase_ingest), ("latency", phase_latency), ("hol", phase_hol),
                          ("outage", phase_outage), ("rss", phase_rss), ("instances", phase_instances)):
            if name in phases:
                log(f"=== phase {name} ===")
                t = time.monotonic()
                try:
                    result = run(args, emulator_host)
                except (PhaseTimeout, RuntimeError, OSError, AssertionError) as exc:
                    result = {"error": f"{name}: {type(exc).__name__}: {exc}", "note": f"{name} failed: {exc}"}
                if "error" in result:
                    errors.append(result.pop("error"))
                    log(f"=== phase {name} FAILED after {time.monotonic() - t:.0f} s: {errors[-1]} ===")
                else:
                    log(f"=== phase {name} done in {time.monotonic() - t:.0f} s ===")
                if "note" in result:
                    notes.append(result.pop("note"))
                results.update(result)
    finally:
        if emulator:
            emulator.stop()
    log(f"total {time.monotonic() - started:.0f} s")
    keys = ("ingest_msgs_per_s", "raw_msgs_per_s", "one_by_one_msgs_per_s", "spool_p99_ms", "store_p99_ms", "hol_live_p99_ms",
            "hol_store_p99_ms", "outage_drain_msgs_per_s", "outage_spool_drain_msgs_per_s", "outage_spool_drain_s",
            "outage_rss_growth_mib", "outage_long_lease_drain_msgs_per_s", "outage_long_lease_drain_s",
            "outage_long_lease_rss_growth_mib", "rss_mib_per_account",
            "cold_start_s", "instances_cold_start_s")
    if args.json:
        print(json.dumps({k: results.get(k) for k in keys}))
    else:
        print(table(results, args.store))
        for note in notes:
            print(f"NOTE: {note}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
