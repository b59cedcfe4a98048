"""Every Prometheus metric of the daemon, in one place.

Each `Metrics` owns its own `CollectorRegistry`: tests start many daemons in one process,
and the global registry would refuse the second registration of a name. The daemon
creates one `Metrics`, hands it to whoever counts, and `/metrics` renders it.

Counters and histograms are fed by the pipeline as things happen; the per-account and
per-state gauges are set from the published `Snapshot` when `/metrics` is scraped
(`update_from_snapshot`), so a scrape never asks an actor anything.
"""
from __future__ import annotations

import platform
import threading
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from wasync.runtime.model import AccountStatus

# Counters would otherwise each carry a `_created` series, doubling what is scraped (and
# 500 accounts' worth of series) for a value no alert or panel uses.
disable_created_metrics()

# The content type that matches what `generate_latest` writes (same pairing the
# library's own exposition uses).
CONTENT_TYPE = CONTENT_TYPE_LATEST

# A flush takes the live lane (flushed at 500 operations) and a history slice of <= 500;
# more when the live lane grew while the store was down.
FLUSH_BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)
FLUSH_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Callback -> spool is an fsync-free append; it must stay in the sub-millisecond range,
# so the buckets are fine-grained at the low end (a typical append is 0.1-0.3 ms) and
# around the 5 ms p99 target, so that histogram_quantile() gives a usable p99.
EVENT_TO_SPOOL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                          0.25, 0.5, 1)
# Event -> stored includes batching (~100 ms) and store latency; a store outage shows up
# in the top buckets. Fine-grained from 50 ms to 2 s: the flush delay and the 1 s p99
# target both fall there, and a 0.1-0.25 s bucket made a p99 of ~110 ms read as ~250 ms.
EVENT_TO_STORE_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5,
                          2, 2.5, 5, 10, 30, 60)


RUN_RESULTS = ("ok", "error", "unavailable", "locked", "fenced", "interrupted")


OUTBOX_RESULTS = ("sent", "retry", "failed", "unknown", "expired")
RESTART_REASONS = ("failure", "degraded", "hung", "session_failed", "start_failed")
ALERT_RESULTS = ("delivered", "failed_attempts", "given_up")
HTTP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process itself: memory, CPU, open fds (Linux), Python, garbage collection.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self.build_info = Gauge("wasync_build_info", "Always 1: the versions this process runs",
                                ("version", "python", "neonize"), registry=r)
        self.build_info.labels(_version("wasync"), platform.python_version(), _version("neonize")).set(1)

        # --- ingest -------------------------------------------------------------
        self.messages_ingested = Counter(
            "wasync_messages_ingested_total", "Messages handed to the store, by sync source and message type",
            ("source", "type"), registry=r)
        self.events = Counter(
            "wasync_events_total", "Raw transport events spooled, by neonize event kind", ("kind",), registry=r)
        self.message_class = Counter(
            "wasync_messages_classified_total", "Message envelopes by class (real content or protocol)",
            ("class",), registry=r)
        self.receipts = Counter("wasync_receipts_total", "Receipts seen, by kind", ("kind",), registry=r)
        self.ignored = Counter(
            "wasync_events_ignored_total", "Events deliberately dropped, by reason", ("reason",), registry=r)
        self.normalize_errors = Counter(
            "wasync_normalize_errors_total", "Raw events that could not be normalized", registry=r)
        self.quarantined = Counter(
            "wasync_spool_quarantined_total", "Spool entries set aside after repeated failures", registry=r)

        # --- spool and store ----------------------------------------------------
        self.spool_depth = Gauge("wasync_spool_depth", "Spooled events not yet stored", registry=r)
        self.spool_oldest_age = Gauge(
            "wasync_spool_oldest_age_seconds", "Age of the oldest spooled event not yet stored", registry=r)
        self.writer_backlog = Gauge(
            "wasync_writer_backlog_ops", "Operations waiting in the writer's memory, by lane (live, bulk: history)",
            ("lane",), registry=r)
        self.flush_batch = Histogram(
            "wasync_store_flush_batch_size", "Operations per store flush", buckets=FLUSH_BATCH_BUCKETS, registry=r)
        self.flush_seconds = Histogram(
            "wasync_store_flush_seconds", "Duration of one store flush", buckets=FLUSH_SECONDS_BUCKETS, registry=r)
        self.store_errors = Counter(
            "wasync_store_errors_total", "Failed store operations, by operation", ("op",), registry=r)
        self.store_up = Gauge("wasync_store_up", "1 when the store answered its last check", registry=r)
        self.store_rejected = Counter(
            "wasync_store_rejected_total", "Writes the store refused for good (their events quarantined), by error",
            ("reason",), registry=r)
        self.swept = Counter(
            "wasync_spool_swept_total", "Spool events of accounts not running here, written by the sweeper",
            registry=r)
        self.event_to_spool = Histogram(
            "wasync_event_to_spool_seconds", "Transport callback to spool append",
            buckets=EVENT_TO_SPOOL_BUCKETS, registry=r)
        self.event_to_store = Histogram(
            "wasync_event_to_store_seconds", "Transport callback to stored", buckets=EVENT_TO_STORE_BUCKETS, registry=r)

        # --- sessions (set from snapshots) --------------------------------------
        self.sessions = Gauge("wasync_sessions", "Accounts held by this instance, by status", ("state",), registry=r)
        self.accounts = Gauge("wasync_accounts", "Accounts held by this instance", registry=r)
        self.account_needs_repair = Gauge(
            "wasync_account_needs_repair", "1 when the account must be re-paired by an operator",
            ("account",), registry=r)
        self.restarts = Counter(
            "wasync_account_restarts_total", "Account actors restarted by the supervisor, by reason",
            ("reason",), registry=r)
        self.hung_actors = Counter(
            "wasync_hung_actors_total", "Account actors that missed the liveness ask and were replaced", registry=r)
        self.stream_replaced = Counter(
            "wasync_stream_replaced_total", "Sessions stopped because another client took them over (StreamReplaced)",
            registry=r)
        self.account_status = Gauge(
            "wasync_account_status", "1 for each account's current status on this instance (one series per account)",
            ("account", "status"), registry=r)
        self.account_last_real_message = Gauge(
            "wasync_account_last_real_message_timestamp_seconds", "When the account's last real message came in",
            ("account",), registry=r)
        self.account_recent_restarts = Gauge(
            "wasync_account_recent_restarts", "Restarts of the account counted against the intensity limit now",
            ("account",), registry=r)
        self.account_stream_replaced = Counter(
            "wasync_account_stream_replaced_total", "StreamReplaced seen per account (another client took the "
            "session)", ("account",), registry=r)
        self.connect_failures = Counter(
            "wasync_connect_failures_total", "Connections WhatsApp refused (ConnectFailure), by reason",
            ("reason",), registry=r)
        self.start_queue = Gauge(
            "wasync_start_queue_depth", "Accounts owned here waiting for a start slot (WASYNC_MAX_STARTS_PER_SECOND)",
            registry=r)
        # --- leases ------------------------------------------------------------
        self.leases_held = Gauge("wasync_leases_held", "Account leases this instance holds", registry=r)
        self.live_instances = Gauge("wasync_live_instances", "Instances whose heartbeat moved within a lease",
                                    registry=r)
        self.lease_acquired = Counter(
            "wasync_lease_acquired_total",
            "Leases taken, by what they were: free, released, expired, regained (given up here, taken back as it was left)",
            ("reason",), registry=r)
        self.lease_lost = Counter(
            "wasync_lease_lost_total", "Leases given up or lost, by why", ("reason",), registry=r)
        self.stale_fence_rejections = Counter(
            "wasync_stale_fence_rejections_total", "Writes refused because their lease epoch was stale", registry=r)

        # --- backfill, recent-sync, thread repair ---------------------------------
        self.backfill_runs = Counter(
            "wasync_backfill_runs_total", "Backfill runs ended, by result: ok, error, unavailable (no on-demand "
            "history on this transport), locked (running elsewhere), fenced, interrupted", ("result",), registry=r)
        self.recent_sync_runs = Counter(
            "wasync_recent_sync_runs_total", "Recent-sync runs ended, by result (as for backfill runs)",
            ("result",), registry=r)
        self.backfill_messages = Counter(
            "wasync_backfill_messages_total", "Messages that on-demand history requests brought in, by kind of run "
            "(backfill, recent_sync)", ("run",), registry=r)
        # `run`, not `job`: Prometheus' own `job` label would rename ours to exported_job.
        self.backfill_running = Gauge(
            "wasync_backfill_running", "Backfill and recent-sync runs going on here, by kind of run", ("run",),
            registry=r)
        self.threads_incomplete = Gauge(
            "wasync_threads_incomplete", "Threads the last backfill of the account looked at whose history is "
            "not known to be complete", ("account",), registry=r)
        self.threads_repaired = Counter(
            "wasync_threads_repaired_total", "Thread documents whose last-message fields thread repair rewrote",
            registry=r)

        self.outbox_results = Counter(
            "wasync_outbox_results_total", "Outbox send attempts ended, by result: sent, retry (certainly not "
            "sent; tried again later), failed (never will be), unknown (may have been sent: an operator decides), "
            "expired", ("result",), registry=r)
        self.outbox_send_seconds = Histogram(
            "wasync_outbox_send_seconds", "Time of one transport send call", registry=r)

        # --- HTTP ------------------------------------------------------------------
        self.http_requests = Counter(
            "wasync_http_requests_total", "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"), registry=r)
        self.http_seconds = Histogram(
            "wasync_http_request_seconds", "HTTP request duration, by route template", ("route",),
            buckets=HTTP_SECONDS_BUCKETS, registry=r)

        self.actor_failures = Counter(
            "wasync_actor_failures_total", "Actor crashes reported to the supervisor, by actor kind",
            ("actor",), registry=r)

        # Pre-create the fixed label values so that rate()/absent() work from the
        # first scrape instead of only after the first event of each kind.
        for cls in ("real", "protocol"):
            self.message_class.labels(cls)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)
        for actor in ("account", "supervisor", "writer", "outbox", "scheduler"):
            self.actor_failures.labels(actor)
        for op in ("messages", "receipts", "edits", "revokes", "threads", "accounts"):
            self.store_errors.labels(op)
        for lane in ("live", "bulk"):
            self.writer_backlog.labels(lane)
        for reason in ("free", "released", "expired", "regained"):
            self.lease_acquired.labels(reason)
        for reason in ("taken", "deadline", "rebalancing", "removed", "fenced", "unwanted"):
            self.lease_lost.labels(reason)
        for status in AccountStatus:
            self.sessions.labels(status.value).set(0)
        for result in RUN_RESULTS:
            self.backfill_runs.labels(result)
            self.recent_sync_runs.labels(result)
        for result in OUTBOX_RESULTS:
            self.outbox_results.labels(result)
        for job in ("backfill", "recent_sync"):
            self.backfill_messages.labels(job)
            self.backfill_running.labels(job).set(0)

        self._lock = threading.Lock()  # update_from_snapshot may run on several threads
        self._repair_labels: set[str] = set()
        self._status_labels: set[tuple[str, str]] = set()
        self._account_labels: set[str] = set()

    def watch_alerts(self, alerts) -> None:
        """Re-pair webhook deliveries, read from the alerts sender at each scrape."""
        self.registry.register(_AlertCollector(alerts))

    def update_from_snapshot(self, snapshot) -> None:
        """Set the state gauges from a published `Snapshot`. Accounts that left the
        snapshot lose their `account_needs_repair` series (no stale series forever)."""
        counts = {status.value: 0 for status in AccountStatus}
        repair: dict[str, int] = {}
        for account in snapshot.accounts:
            status = getattr(account.status, "value", account.status)
            counts[status] = counts.get(status, 0) + 1
            needs = account.needs_repair or status == AccountStatus.NEEDS_REPAIR.value
            repair[account.account_id] = 1 if needs else 0
        with self._lock:
            for state, count in counts.items():
                self.sessions.labels(state).set(count)
            self.accounts.set(len(snapshot.accounts))
            for account_id in self._repair_labels - repair.keys():
                self.account_needs_repair.remove(account_id)
            for account_id, value in repair.items():
                self.account_needs_repair.labels(account_id).set(value)
            self._repair_labels = set(repair)
            self._per_account(snapshot.accounts)
            self.start_queue.set(sum(1 for a in snapshot.accounts if not a.running and getattr(
                a.status, "value", a.status) in (AccountStatus.CONNECTING.value, AccountStatus.PAIRING.value)))
            self.spool_depth.set(snapshot.spool_depth)
            age_ms = snapshot.spool_oldest_age_ms
            self.spool_oldest_age.set(0 if age_ms is None else age_ms / 1000)
            self.store_up.set(1 if snapshot.store.connected else 0)

    def _per_account(self, accounts) -> None:
        """What an operator of 500 accounts looks up per account (held under self._lock)."""
        statuses = {(a.account_id, getattr(a.status, "value", a.status)) for a in accounts}
        for gone in self._status_labels - statuses:
            self.account_status.remove(*gone)
        for labels in statuses:
            self.account_status.labels(*labels).set(1)
        self._status_labels = statuses
        ids = {a.account_id for a in accounts}
        for gone in self._account_labels - ids:
            for gauge in (self.account_last_real_message, self.account_recent_restarts):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        for a in accounts:
            self.account_recent_restarts.labels(a.account_id).set(a.restarts)
            if a.last_real_message_ms is not None:
                self.account_last_real_message.labels(a.account_id).set(a.last_real_message_ms / 1000)
        self._account_labels = ids

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (serve with CONTENT_TYPE)."""
        return generate_latest(self.registry)


class _AlertCollector:
    """`wasync_alert_webhook_deliveries_total{result}` from `Alerts.stats()` at scrape time."""

    def __init__(self, alerts) -> None:
        self.alerts = alerts

    def collect(self):
        family = CounterMetricFamily("wasync_alert_webhook_deliveries", "Re-pair alert webhook calls, by result: "
                                     "delivered, failed_attempts (retried), given_up", labels=("result",))
        stats = self.alerts.stats()
        for result in ALERT_RESULTS:
            family.add_metric((result,), stats.get(result, 0))
        yield family
