"""The start-up phases of bench/pipeline.py: instances (cold start when connects take turns
per process) and rss (memory per account, then a cold start of them all). What each
measures is in bench/pipeline.py's docstring."""
from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from rig import (BENCH_ADMIN_RATE, DaemonProcess, MiB, PhaseStalled, Rig, SimProcess, account_id, log, poll,
                 proc_status, sample_rss, settle, small_world)


def phase_instances(args, emulator_host: Optional[str]) -> dict:
    """Cold start of `--instances-accounts` accounts when connects take turns per process
    (WASYNC_SIM_REGISTRATION_MS=`--registration-ms`, as neonize registers one client at a
    time), on 1, 2 and 4 instances sharing one data dir (the lease coordinator spreads
    the accounts): seconds from `wasync run` until the simulator sees every account
    connected. SQLite only (the instances share the embedded store)."""
    if args.store != "sqlite":
        return {"note": "instances: measured on SQLite only"}
    n, reg_ms = args.instances_accounts, args.registration_ms
    world = small_world(n, 1, 1)
    out: dict[str, float] = {}
    for k in args.instance_counts:
        workdir = Path(tempfile.mkdtemp(prefix=f"wasync-bench-instances{k}-"))
        sim = SimProcess(world, workdir / "sim", speed=1.0).start(timeout_s=180)
        env = {"WASYNC_TRANSPORT": sim.address, "WASYNC_SIM_REGISTRATION_MS": str(reg_ms),
               "WASYNC_ADMIN_RATE_PER_MINUTE": str(BENCH_ADMIN_RATE),
               "WASYNC_MAX_STARTS_PER_SECOND": str(args.starts_per_second), "LOG_LEVEL": args.daemon_log_level}
        daemons: list[DaemonProcess] = []

        def connected() -> int:
            return sum(1 for a in sim.stats()["accounts"].values() if a.get("connected"))

        def start_all() -> float:
            daemons[:] = [DaemonProcess(workdir / "daemon", env) for _ in range(k)]
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=k) as pool:
                list(pool.map(lambda d: d.start(timeout_s=60), daemons))
            return started

        try:
            start_all()
            first = daemons[0]
            for i in range(n):
                status, body = first.request("POST", "/api/whatsapp/accounts",
                                             {"accountId": account_id(i), "phone": world["accounts"][i]["phone"]})
                if status != 201:
                    raise RuntimeError(f"adding {account_id(i)}: HTTP {status} {body}")
            poll(lambda: connected() >= n, args.timeout, f"{n} accounts connected on {k} instances", every_s=0.2)
            with ThreadPoolExecutor(max_workers=k) as pool:
                codes = list(pool.map(lambda d: d.stop(timeout_s=90), daemons))
            if any(codes):
                raise RuntimeError(f"instances exited {codes} on SIGTERM")
            poll(lambda: connected() == 0, 30, "every session closed", every_s=0.2)
            started = start_all()
            poll(lambda: connected() >= n, args.timeout, f"{n} accounts connected again on {k} instances",
                 every_s=0.1)
            out[str(k)] = time.monotonic() - started
            log(f"instances: {k} instance(s), {n} accounts, connects {reg_ms} ms each per process: "
                f"all connected {out[str(k)]:.1f} s after `wasync run`")
        finally:
            for d in daemons:
                try:
                    d.stop(timeout_s=90)
                except (AssertionError, OSError) as exc:
                    log(f"instances: stopping an instance: {exc}")
                    d.kill()
            sim.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return {"instances_cold_start_s": out}


# --- phase 3: RSS per account --------------------------------------------------------


def phase_rss(args, emulator_host: Optional[str]) -> dict:
    n = args.rss_accounts
    chats, per_chat = 1, 3
    world = small_world(n, chats, per_chat)
    log(f"rss: {n} accounts, {chats} chat x {per_chat} messages each")
    with Rig("rss", world, args, emulator_host) as rig:
        pid = rig.daemon.proc.pid
        time.sleep(args.rss_idle)
        rss0 = sample_rss(pid)
        threads0 = int(proc_status(pid)["Threads"])
        log(f"rss: 0 accounts: VmRSS {rss0 / MiB:.1f} MiB, {threads0} threads")
        t0 = time.monotonic()
        added = rig.add_accounts([a["phone"] for a in world["accounts"]])
        log(f"rss: {n} accounts added in {added:.1f} s")
        try:
            settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        except PhaseStalled as exc:
            stats = rig.sim.stats()
            rss_n = sample_rss(pid)
            status = proc_status(pid)
            connected = rig.connected()
            log(f"rss: STALLED: {exc}; simulator: {stats['sockets']} sockets open, "
                f"{sum(1 for a in stats['accounts'].values() if a.get('connected'))} accounts connected, "
                f"{stats['totals'].get('connectionsOpened')} connections opened")
            log(f"rss: at the stall: VmRSS {rss_n / MiB:.1f} MiB, {status['Threads']} threads, {n} account actors, "
                f"{connected} connected: ({rss_n / MiB:.1f} - {rss0 / MiB:.1f}) / {n} = "
                f"{(rss_n - rss0) / n / MiB:.3f} MiB per account added (not the figure asked for: "
                f"not all accounts connected)")
            rig.failed = True
            return {"rss_mib_per_account": None, "rss0_mib": rss0 / MiB, "rss_n_mib": rss_n / MiB,
                    "error": f"rss: {exc}",
                    "note": f"RSS per account n/a: only {connected}/{n} accounts connected ({exc})"}
        log(f"rss: all {n} connected with their history stored after {time.monotonic() - t0:.1f} s; "
            f"idling {args.rss_idle:g} s")
        stats = rig.sim.stats()
        time.sleep(args.rss_idle)
        rss_n = sample_rss(pid)
        status = proc_status(pid)
        per = (rss_n - rss0) / n / MiB
        log(f"rss: {n} accounts: VmRSS {rss_n / MiB:.1f} MiB, {status['Threads']} threads "
            f"(simulator: {stats['sockets']} sockets, {stats['totals'].get('connectionsOpened')} connections opened); "
            f"({rss_n / MiB:.1f} - {rss0 / MiB:.1f}) / {n} = {per:.3f} MiB per account")
        # Cold start: `wasync run` on a store that holds all of them, until every one is connected.
        started = rig.restart()
        settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        cold = time.monotonic() - started
        log(f"rss: cold start: all {n} accounts connected {cold:.1f} s after `wasync run` began")
        return {"rss_mib_per_account": per, "rss0_mib": rss0 / MiB, "rss_n_mib": rss_n / MiB,
                "threads0": threads0, "threads_n": int(status["Threads"]), "cold_start_s": cold}
