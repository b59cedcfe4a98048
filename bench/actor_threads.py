"""What one OS thread per account actor costs: RSS and virtual memory of N idle pykka
ThreadingActors (each with an account actor's default stack), and how long starting and
stopping them takes. Prints one line per N; `--json` prints one JSON object.

Usage: python bench/actor_threads.py [--counts 500,2000] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import pykka


class Idle(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message):
        return message


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure(count: int) -> dict:
    rss0, vm0 = status_kib("VmRSS"), status_kib("VmSize")
    started = time.perf_counter()
    refs = [Idle.start() for _ in range(count)]
    for ref in refs:
        ref.ask("ping")  # every thread has run
    start_s = time.perf_counter() - started
    time.sleep(0.5)
    rss, vm = status_kib("VmRSS"), status_kib("VmSize")
    threads = threading.active_count()
    started = time.perf_counter()
    for ref in refs:
        ref.stop(block=False)
    for ref in refs:
        while ref.is_alive():
            time.sleep(0.001)
    stop_s = time.perf_counter() - started
    return {"actors": count, "threads": threads, "rss_kib_per_actor": (rss - rss0) / count,
            "virtual_kib_per_actor": (vm - vm0) / count, "start_s": start_s, "stop_s": stop_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="500,2000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [measure(int(n)) for n in args.counts.split(",")]
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(f"{r['actors']:5d} actors: RSS {r['rss_kib_per_actor']:.0f} KiB/actor "
              f"({r['rss_kib_per_actor'] * r['actors'] / 1024:.1f} MiB), virtual {r['virtual_kib_per_actor'] / 1024:.1f} "
              f"MiB/actor ({r['virtual_kib_per_actor'] * r['actors'] / 1024 / 1024:.1f} GiB), "
              f"start {r['start_s']:.2f} s, stop {r['stop_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
