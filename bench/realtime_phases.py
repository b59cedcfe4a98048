"""The realtime phases of bench/pipeline.py: latency (live traffic alone), hol (live
traffic behind a history burst) and outage (live traffic while the store is away).
What each measures is in bench/pipeline.py's docstring."""
from __future__ import annotations

import math
import sqlite3
import time
from typing import Optional

from rig import (MiB, Rig, _ms, _p, hist_delta, hist_summary, log, phone, poll, quantile, rss_bytes, sample_rss,
                 scrape, settle, small_world, spool_backlog, spool_depth, spool_left)

SPOOL_METRIC = "wasync_event_to_spool_seconds"
STORE_METRIC = "wasync_event_to_store_seconds"


# --- phase 2: realtime latency -------------------------------------------------------


def phase_latency(args, emulator_host: Optional[str]) -> dict:
    n, rate, seconds = args.latency_accounts, args.latency_rate, args.latency_seconds
    chats, per_chat = 5, 5
    world = small_world(n, chats, per_chat)
    per_account = int(rate * seconds + 1e-9)
    expected = n * per_account
    log(f"latency: {n} accounts x {rate:g} msgs/s for {seconds:g} s = {expected} live messages")
    with Rig("latency", world, args, emulator_host) as rig:
        t0 = time.monotonic()
        rig.add_accounts([a["phone"] for a in world["accounts"]])
        settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        log(f"latency: {n} accounts connected, history stored, spool empty after {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)
        before = scrape(rig.daemon)
        live_before = rig.reader.messages("realtime")
        interval = 1.0 / rate
        events = [{"at": round(i * interval / n, 4), "account": phone(i), "event": "traffic",
                   "rate": rate, "for": seconds} for i in range(n)]
        rig.sim.inject(*events)
        started = time.monotonic()
        log(f"latency: traffic injected (staggered over {interval:g} s); waiting ~{seconds:g} s")

        def stored() -> int:
            return int(scrape(rig.daemon)[STORE_METRIC]["count"] - before[STORE_METRIC]["count"])

        progress_at = [0.0]

        def check() -> bool:
            if stored() >= expected:
                return True
            elapsed = time.monotonic() - started
            if elapsed - progress_at[0] >= 5:
                progress_at[0] = elapsed
                delivered = rig.sim.stats()["totals"].get("delivered", 0)
                log(f"latency: {elapsed:.0f} s: {stored()}/{expected} live messages stored "
                    f"(simulator delivered {delivered} messages in total), spool depth {spool_depth(rig.data_dir)}")
            return False

        poll(check, seconds + args.timeout, f"{expected} live messages stored", every_s=0.5)
        time.sleep(0.5)
        after = scrape(rig.daemon)
        live = rig.reader.messages("realtime") - live_before
        spool = hist_delta(after[SPOOL_METRIC], before[SPOOL_METRIC])
        store = hist_delta(after[STORE_METRIC], before[STORE_METRIC])
        spool_p99, spool_note = quantile(0.99, spool)
        store_p99, store_note = quantile(0.99, store)
        log(f"latency: {live} live messages in the store after {time.monotonic() - started:.1f} s")
        log(f"latency: {SPOOL_METRIC} {hist_summary(spool)}")
        log(f"latency: {STORE_METRIC} {hist_summary(store)}")
        log(f"latency: p99 event->spool {_ms(spool_p99)} ({spool_note}); "
            f"p99 event->store {_ms(store_p99)} ({store_note}); bucket-estimated")
        cross = sorted(rig.reader.live_latencies_ms())
        if cross:
            p = cross[min(len(cross) - 1, int(math.ceil(0.99 * len(cross))) - 1)]
            log(f"latency: cross-check from the store (createdAt - simulator timestamp, ms resolution, "
                f"includes the simulator->daemon hop): n={len(cross)} p50={cross[len(cross) // 2]:.0f} ms "
                f"p99={p:.0f} ms max={cross[-1]:.0f} ms")
        return {"spool_p99_ms": spool_p99 * 1000 if spool_p99 is not None else None,
                "store_p99_ms": store_p99 * 1000 if store_p99 is not None else None,
                "spool_note": spool_note, "store_note": store_note, "live_messages": live,
                "observed": int(store["count"])}


# --- phase 2b: realtime behind a history burst (head-of-line blocking) ----------------


def phase_hol(args, emulator_host: Optional[str]) -> dict:
    """Live accounts at `--latency-rate` msgs/s while `--hol-big` other accounts ingest
    `--hol-history` history messages each: realtime event -> stored, p99, measured from the
    store (createdAt - the simulator's message time) for the live messages only."""
    live_n, big_n, history = args.latency_accounts, args.hol_big, args.hol_history
    rate, seconds = args.latency_rate, args.latency_seconds
    chats = 20
    world = small_world(live_n, 2, 2)
    for i in range(big_n):
        world["accounts"].append({"phone": phone(live_n + i), "paired": True, "initialSyncPerChat": history // chats,
                                  "generate": {"chats": chats, "messagesPerChat": history // chats}})
    log(f"hol: {live_n} live accounts x {rate:g} msgs/s for {seconds:g} s while {big_n} accounts ingest "
        f"{history} history messages each")
    with Rig("hol", world, args, emulator_host) as rig:
        rig.add_accounts([a["phone"] for a in world["accounts"][:live_n]])
        settle(rig, live_n, live_n * 4, args.timeout, args.stall)
        interval = 1.0 / rate
        rig.sim.inject(*({"at": round(i * interval / live_n, 4), "account": phone(i), "event": "traffic",
                          "rate": rate, "for": seconds} for i in range(live_n)))
        time.sleep(min(5.0, seconds / 4))
        baseline = sorted(rig.reader.live_latencies_ms())
        log(f"hol: before the burst: {len(baseline)} live messages stored, p99 {_p(baseline, 0.99):.0f} ms")
        burst_started = time.monotonic()
        before = scrape(rig.daemon)
        rig.add_accounts([a["phone"] for a in world["accounts"][live_n:]], first=live_n)
        expected_live = int(live_n * rate * seconds)

        def done() -> bool:
            return rig.reader.messages("realtime") >= expected_live
        poll(done, seconds + args.timeout, f"{expected_live} live messages stored", every_s=0.5)
        after = scrape(rig.daemon)
        stored_history = rig.reader.messages() - rig.reader.messages("realtime")
        burst_s = time.monotonic() - burst_started
        # The daemon's own view (spool append -> stored), without the simulator -> daemon hop:
        # the simulator is one process that also serializes the burst's history.
        inside, inside_note = quantile(0.99, hist_delta(after[STORE_METRIC], before[STORE_METRIC]))
        log(f"hol: inside the daemon during the burst: spool->store p99 {_ms(inside)} ({inside_note})")
        appends = hist_delta(after[SPOOL_METRIC], before[SPOOL_METRIC])
        log(f"hol: transport callback -> spool append during the burst (live and history events): "
            f"{hist_summary(appends)}")
        all_live = sorted(rig.reader.live_latencies_ms())
        log(f"hol: {len(all_live)} live messages; {stored_history} history messages stored {burst_s:.0f} s after "
            f"the burst began; live event->store p50 {_p(all_live, 0.5):.0f} ms p99 {_p(all_live, 0.99):.0f} ms "
            f"max {all_live[-1]:.0f} ms (before the burst p99 {_p(baseline, 0.99):.0f} ms)")
        return {"hol_live_p99_ms": _p(all_live, 0.99), "hol_live_max_ms": all_live[-1] if all_live else None,
                "hol_store_p99_ms": None if inside is None else inside * 1000, "hol_history_stored": stored_history}


def phase_outage(args, emulator_host: Optional[str]) -> dict:
    """`--latency-accounts` live accounts at `--latency-rate` msgs/s while the store is
    unreachable for `--outage-seconds` (SQLite: this process holds an exclusive lock on the
    store file), then back; twice. With the default lease the sessions stop 2/3 of a lease
    into the outage (lease safety) and WhatsApp keeps the rest; with a lease longer than
    the outage (WASYNC_LEASE_MS = 2 x the outage + 15 s: sockets stay up) the spool takes
    every message, and the drain is the daemon's own. Figures of each: the daemon's RSS
    during the outage (flat means the backlog is not piling up in memory), and how fast the
    messages of the outage are stored once the store is back (backlog / seconds until the
    last one is stored), as a ratio of the history ingest rate of the same run."""
    if args.store != "sqlite":
        return {"note": "outage: measured on SQLite only (the bench cannot take the emulator away and back)"}
    stopped = _outage_run(args, emulator_host, lease_ms=None)
    long_lease = int(2 * args.outage_seconds * 1000 + 15_000)
    kept = _outage_run(args, emulator_host, lease_ms=long_lease)
    return {**stopped, **{f"outage_long_lease_{key[len('outage_'):]}": value for key, value in kept.items()}}


def _outage_run(args, emulator_host: Optional[str], lease_ms: Optional[int]) -> dict:
    n, rate, outage = args.latency_accounts, args.latency_rate, args.outage_seconds
    world = small_world(n, 2, 2)
    backlog = int(n * int(rate * outage + 1e-9))
    name = "outage" if lease_ms is None else "outage-long-lease"
    log(f"{name}: {n} accounts x {rate:g} msgs/s, store unreachable for {outage:g} s ({backlog} messages)"
        + ("" if lease_ms is None else f", WASYNC_LEASE_MS={lease_ms} (sockets stay up)"))
    env = None if lease_ms is None else {"WASYNC_LEASE_MS": str(lease_ms)}
    with Rig(name, world, args, emulator_host, env=env) as rig:
        rig.add_accounts([a["phone"] for a in world["accounts"]])
        settle(rig, n, n * 4, args.timeout, args.stall)
        pid = rig.daemon.proc.pid
        live_before = rig.reader.messages("realtime")
        rss_before = sample_rss(pid, samples=3)
        lock = sqlite3.connect(rig.data_dir / "wasync.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # every write of the daemon fails (after its busy timeout)
        interval = 1.0 / rate
        rig.sim.inject(*({"at": round(i * interval / n, 4), "account": phone(i), "event": "traffic",
                          "rate": rate, "for": outage} for i in range(n)))
        down_at = time.monotonic()
        samples: list[int] = []
        while time.monotonic() - down_at < outage:
            time.sleep(min(5.0, max(0.0, outage - (time.monotonic() - down_at))))
            samples.append(rss_bytes(pid))
            log(f"{name}: {time.monotonic() - down_at:.0f} s down: VmRSS {samples[-1] / MiB:.1f} MiB, "
                f"spool depth {spool_depth(rig.data_dir)}, {rig.connected()}/{n} connected")
        held, held_msgs, last_seq = spool_backlog(rig.data_dir)  # what the daemon holds itself (the rest waits at WhatsApp)
        lock.execute("ROLLBACK")
        lock.close()
        back_at = time.monotonic()
        log(f"{name}: the store is back; the spool holds {held} rows ({held_msgs} messages)")

        # The spool's own backlog first, timed on its own: until every row it held is written
        # and marked done (the rest waits at WhatsApp until the sessions reconnect; createdAt
        # cannot time it: a write that waited out the outage carries the time it began).
        spool_s = None
        while spool_s is None and time.monotonic() - back_at < args.timeout:
            if spool_left(last_seq) == 0:
                spool_s = time.monotonic() - back_at
            else:
                time.sleep(0.01)
        if spool_s is not None:
            log(f"{name}: the spool's {held} rows stored within {spool_s * 1000:.0f} ms of the store coming back "
                f"({held_msgs / max(spool_s, 1e-3):.0f} msgs/s)")

        def drained() -> bool:
            return rig.reader.messages("realtime") - live_before >= backlog

        poll(drained, args.timeout, f"the {backlog} messages of the outage stored", every_s=0.1,
             progress=lambda elapsed: log(f"{name}: {elapsed:.0f} s after: "
                                          f"{rig.reader.messages('realtime') - live_before}/{backlog} stored, "
                                          f"{rig.connected()}/{n} connected, spool depth {spool_depth(rig.data_dir)}"))
        drain_s = time.monotonic() - back_at
        growth = (max(samples) - rss_before) / MiB
        log(f"{name}: all {backlog} stored {drain_s:.1f} s after the store came back ({backlog / drain_s:.0f} msgs/s); "
            f"VmRSS before {rss_before / MiB:.1f} MiB, during the outage {min(samples) / MiB:.1f}-"
            f"{max(samples) / MiB:.1f} MiB (+{growth:.1f} MiB)")
        return {"outage_drain_msgs_per_s": backlog / drain_s, "outage_drain_s": drain_s,
                "outage_spool_rows": held, "outage_spool_messages": held_msgs, "outage_spool_drain_s": spool_s,
                "outage_spool_drain_msgs_per_s": held_msgs / max(spool_s, 1e-3) if spool_s is not None else None,
                "outage_rss_growth_mib": growth}
