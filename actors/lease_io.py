"""LeaseIOActor: the lease coordinator's store calls, one round at a time.

A Firestore call can hang for its whole deadline (20 s and more) when the store stalls.
The coordinator must still stop sockets at their renewal deadlines while that happens,
so it never calls the store itself: it tells this helper what to do in a `Round` and
gets a `RoundDone` back. A failed step ends the round and says so; nothing here decides.
"""
from __future__ import annotations

import logging

import pykka

from wasync.actors.leases_protocol import Round, RoundDone
from wasync.actors.reply import answer
from wasync.runtime.clock import Clock

log = logging.getLogger("wasync.leases")


class LeaseIOActor(pykka.ThreadingActor):
    # A helper stuck in a store call must not keep the process from exiting.
    use_daemon_thread = True

    def __init__(self, store, coordinator: pykka.ActorRef, clock: Clock, *, instance_id: str, incarnation: str,
                 lease_ms: int, started_at_ms: int, version: str):
        super().__init__()
        self.store, self.coordinator, self.clock = store, coordinator, clock
        self.instance_id, self.incarnation, self.lease_ms = instance_id, incarnation, lease_ms
        self.started_at_ms, self.version = started_at_ms, version

    def on_receive(self, message: Round):
        done = self._round(message)
        if message.reply is not None:
            answer(message.reply, done.error is None)
        else:
            try:
                self.coordinator.tell(done)
            except pykka.ActorDeadError:
                pass

    def _round(self, r: Round) -> RoundDone:
        store, now_ms, out = self.store, self.clock.wall_ms(), {}
        step = "leave"
        try:
            if r.leave:
                out["released"] = tuple(lease.account_id for lease in r.release
                                        if store.release_lease(lease.account_id, lease.holder, lease.epoch))
                store.remove_instance(self.instance_id)
                return RoundDone(r.sent_s, self.clock.monotonic_s(), **out)
            if r.renew:
                step = "renew"
                out["renew_sent"] = r.renew
                out["renew_sent_s"] = self.clock.monotonic_s()
                out["renewed"] = tuple(store.renew_leases(r.renew, self.clock.wall_ms(), self.lease_ms))
            step = "acquire"
            acquired: list = []
            out["acquired"] = acquired  # what was taken before a failure is reported all the same
            for n, (account_id, expected) in enumerate(r.acquire):
                sent_s = self.clock.monotonic_s()  # its deadline counts from here, not from the round
                if n and sent_s >= r.acquire_until_s:
                    break  # the rest next round, after the renewals (at least one per round)
                lease = store.acquire_lease(account_id, self.instance_id, expected, self.clock.wall_ms(),
                                            self.lease_ms)
                if lease is not None:
                    acquired.append((lease, expected, sent_s))
            step = "release"
            released: list[str] = []
            out["released"] = released
            for lease in r.release:
                if store.release_lease(lease.account_id, lease.holder, lease.epoch):
                    released.append(lease.account_id)
            step = "heartbeat"
            store.heartbeat_instance(self.instance_id, self.incarnation, now_ms, self.started_at_ms, self.version,
                                     r.held)
            for instance_id in r.remove_instances:
                store.remove_instance(instance_id)
            step = "read"
            out["records"] = tuple(store.list_account_records())
            out["leases"] = tuple(store.list_leases())
            out["instances"] = tuple(store.list_instances())
        except Exception as exc:  # the store is down or slow: say so; the coordinator keeps time
            out["error"] = f"{step}: {type(exc).__name__}: {exc}"
        out = {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
        return RoundDone(r.sent_s, self.clock.monotonic_s(), **out)
