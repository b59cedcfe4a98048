"""Lease renewal cost: what keeping 500 accounts' leases alive costs one instance.

With WASYNC_LEASE_MS=15000 every lease is renewed every 5 s: 500 accounts are 100
renewals a second per instance (DESIGN.md "Ownership across instances"). Measured in one
run against the Firestore emulator (and SQLite), three ways:

  ours        Store.renew_leases: one batch of conditional writes (each must find its
              lease as this instance last wrote it), no reads
  one_each    one conditional write per lease (what ours falls back to when a lease was
              taken meanwhile)
  tx_each     one read-write transaction per lease (the obvious way)

Prints seconds per round of 500 and the share of the 5 s renew interval it takes.
Usage: python bench/lease_renewal.py [--leases 500] [--rounds 5] [--json] [--emulator HOST:PORT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TTL_MS = 15_000
RENEW_EVERY_S = TTL_MS / 3 / 1000


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def measure(store, leases: int, rounds: int) -> dict:
    now = int(time.time() * 1000)
    held = [store.acquire_lease(f"bench{n:04d}", "bench-instance", None, now, TTL_MS) for n in range(leases)]
    times = {"ours": [], "one_each": [], "tx_each": []}
    for r in range(rounds):
        now += 5000
        started = time.perf_counter()
        held = store.renew_leases(held, now, TTL_MS)
        times["ours"].append(time.perf_counter() - started)
        assert len(held) == leases
        now += 5000
        started = time.perf_counter()
        held = [store.renew_leases([lease], now, TTL_MS)[0] for lease in held]
        times["one_each"].append(time.perf_counter() - started)
        now += 5000
        started = time.perf_counter()
        held = [store.renew_leases([_unversioned(lease)], now, TTL_MS)[0] for lease in held]
        times["tx_each"].append(time.perf_counter() - started)
    best = {k: min(v) for k, v in times.items()}
    return {"leases": leases, "seconds_per_round": {k: round(v, 3) for k, v in best.items()},
            "share_of_interval": {k: round(v / RENEW_EVERY_S, 3) for k, v in best.items()},
            "ours_vs_tx_each": round(best["tx_each"] / best["ours"], 1)}


def _unversioned(lease):
    """The same lease without the store's revision: the store must read it (a transaction)."""
    from dataclasses import replace

    return replace(lease, version=None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--leases", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--emulator", help="a running Firestore emulator at HOST:PORT")
    args = p.parse_args()
    results = {}
    from wasync.runtime.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        results["sqlite"] = measure(store, args.leases, args.rounds)
        store.close()
    from emulator import emulator_env

    with emulator_env(args.emulator, log):
        from wasync.runtime.store.firestore import FirestoreStore

        store = FirestoreStore(project=f"bench-leases-{os.getpid()}")
        results["firestore_emulator"] = measure(store, args.leases, args.rounds)
        store.close()
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            s, share = r["seconds_per_round"], r["share_of_interval"]
            print(f"{name}: {r['leases']} leases per round: ours {s['ours']} s ({share['ours']:.1%} of the "
                  f"{RENEW_EVERY_S:g} s interval), one conditional write each {s['one_each']} s, one transaction "
                  f"each {s['tx_each']} s ({r['ours_vs_tx_each']}x ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
