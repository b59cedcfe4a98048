"""Settings: defaults, aliases and their precedence, exact conversions, validation."""
import io
import subprocess
import sys

import pytest

from wasync.runtime import config
from wasync.runtime.config import ConfigError, load


def test_defaults_match_spec():
    s = load({})
    assert (s.port, s.host) == (8080, "127.0.0.1")
    assert s.data_dir == "./data" and s.sessions_path.endswith("sessions")
    assert s.transport == "neonize" and s.store == "sqlite" and s.log_level == "info"
    assert s.max_starts_per_second == 5 and s.lease_ms == 15000 and s.lease_renew_ms == 5000
    assert s.sync_full_history is True and s.history_sync_dry_run is False
    assert (s.history_sync_days, s.history_sync_size_mb) == (3650, 102400)
    assert s.auto_backfill_enabled is True
    assert s.backfill_interval_ms == 720_000
    assert s.backfill_cooldown_ms == 360 * 60_000
    assert s.auto_backfill_attempt_backoff_ms == 600_000
    assert s.auto_backfill_lease_ms == 900_000
    assert s.auto_backfill_max_accounts_per_tick == 3
    assert s.backfill_concurrency == 2
    assert (s.backfill_threads, s.backfill_count, s.backfill_messages_per_thread) == (50, 100, 20)
    assert s.backfill_max_days is None
    assert s.recent_sync_enabled and s.recent_sync_interval_ms == 120_000
    assert s.recent_sync_lookback_ms == 21_600_000 and s.recent_sync_max_threads == 30
    assert s.recent_sync_max_messages_per_thread == 20 and s.recent_sync_max_concurrency == 1
    assert s.recent_sync_lease_ms == 300_000
    assert s.auto_repair_threads_enabled and s.auto_repair_threads_limit_per_run == 200
    assert s.auto_repair_cooldown_ms == 3_600_000
    assert s.degraded_after_ms == 300_000
    assert s.repair_alert_webhook_url is None and s.admin_token is None
    assert all(src == "default" for _, src in s.sources)


def test_instance_id_defaults_to_hostname_pid():
    import os
    import socket

    assert load({}).instance_id == f"{socket.gethostname()}-{os.getpid()}"


def test_sessions_path_follows_data_dir_unless_set():
    assert load({"WASYNC_DATA_DIR": "/srv/wa"}).sessions_path == "/srv/wa/sessions"
    s = load({"WASYNC_DATA_DIR": "/srv/wa", "SESSIONS_PATH": "/keys"})
    assert s.sessions_path == "/keys" and s.source_of("sessions_path") == "env SESSIONS_PATH"


@pytest.mark.parametrize(
    "field, preferred, legacy, pref_raw, legacy_raw, pref_ms, legacy_ms",
    [
        ("backfill_interval_ms", "WHATSAPP_BACKFILL_INTERVAL_SECONDS", "AUTO_BACKFILL_INTERVAL_MS",
         "30", "45000", 30_000, 45_000),
        ("backfill_cooldown_ms", "WHATSAPP_BACKFILL_COOLDOWN_MINUTES", "AUTO_BACKFILL_COOLDOWN_SUCCESS_MS",
         "2", "90000", 120_000, 90_000),
        ("backfill_concurrency", "WHATSAPP_BACKFILL_CONCURRENCY", "AUTO_BACKFILL_MAX_CONCURRENCY",
         "4", "3", 4, 3),
    ],
)
def test_alias_precedence(field, preferred, legacy, pref_raw, legacy_raw, pref_ms, legacy_ms):
    only_legacy = load({legacy: legacy_raw})
    assert getattr(only_legacy, field) == legacy_ms
    assert only_legacy.source_of(field) == f"legacy {legacy}"
    both = load({preferred: pref_raw, legacy: legacy_raw})
    assert getattr(both, field) == pref_ms
    assert both.source_of(field) == f"env {preferred}"


@pytest.mark.parametrize(
    "new, old, expected",
    [
        (None, None, True), ("true", None, True), (None, "yes", True), ("1", "1", True),
        ("false", None, False), (None, "no", False), ("true", "false", False),
        ("0", "true", False), ("no", "no", False),
    ],
)
def test_auto_backfill_off_if_either_switch_is_false(new, old, expected):
    env = {}
    if new is not None:
        env["WHATSAPP_AUTO_BACKFILL_ENABLED"] = new
    if old is not None:
        env["AUTO_BACKFILL_ENABLED"] = old
    assert load(env).auto_backfill_enabled is expected


def test_conversions_are_exact():
    s = load({"WHATSAPP_BACKFILL_INTERVAL_SECONDS": "1.5", "WHATSAPP_BACKFILL_COOLDOWN_MINUTES": "0.5",
              "AUTO_REPAIR_COOLDOWN_MINUTES": "90"})
    assert s.backfill_interval_ms == 1500
    assert s.backfill_cooldown_ms == 30_000
    assert s.auto_repair_cooldown_ms == 5_400_000


@pytest.mark.parametrize("raw, value", [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                        ("false", False), ("0", False), ("No", False)])
def test_booleans(raw, value):
    assert load({"WHATSAPP_HISTORY_SYNC_DRY_RUN": raw}).history_sync_dry_run is value


def test_initial_sync_depth():
    s = load({"WHATSAPP_HISTORY_SYNC_DAYS": "365", "WHATSAPP_HISTORY_SYNC_SIZE_MB": " 2048 "})
    assert (s.history_sync_days, s.history_sync_size_mb) == (365, 2048)
    assert s.source_of("history_sync_days") == "env WHATSAPP_HISTORY_SYNC_DAYS"


def test_sim_transport():
    s = load({"WASYNC_TRANSPORT": "sim://127.0.0.1:8765"})
    assert s.sim_address == ("127.0.0.1", 8765)
    assert load({}).sim_address is None


@pytest.mark.parametrize(
    "name, raw, expected_words",
    [
        ("PORT", "abc", "integer from 1 to 65535"),
        ("PORT", "70000", "integer from 1 to 65535"),
        ("WASYNC_MAX_STARTS_PER_SECOND", "0", "positive number"),
        ("WASYNC_LEASE_MS", "100", "at least 3000"),
        ("WASYNC_STORE", "mongo", "sqlite/firestore"),
        ("WASYNC_TRANSPORT", "sim://nowhere", "sim://host:port"),
        ("LOG_LEVEL", "loud", "debug/info/warning/error"),
        ("SESSIONS_DSN", "mysql://x", "postgres://"),
        ("FIRESTORE_EMULATOR_HOST", "localhost", "host:port"),
        ("WHATSAPP_SYNC_FULL_HISTORY", "maybe", "true/false"),
        ("WHATSAPP_HISTORY_SYNC_DRY_RUN", "2", "true/false"),
        ("WHATSAPP_HISTORY_SYNC_DAYS", "0", "integer >= 1"),
        ("WHATSAPP_HISTORY_SYNC_DAYS", "a year", "integer >= 1"),
        ("WHATSAPP_HISTORY_SYNC_SIZE_MB", "-1", "integer >= 1"),
        ("WHATSAPP_HISTORY_SYNC_SIZE_MB", "1.5", "integer >= 1"),
        ("WHATSAPP_AUTO_BACKFILL_ENABLED", "on", "true/false"),
        ("AUTO_BACKFILL_ENABLED", "off", "true/false"),
        ("WHATSAPP_BACKFILL_INTERVAL_SECONDS", "ten", "number of seconds"),
        ("WHATSAPP_BACKFILL_INTERVAL_SECONDS", "0.0001", "whole number of milliseconds"),
        ("AUTO_BACKFILL_INTERVAL_MS", "-5", "at least 1 ms"),
        ("WHATSAPP_BACKFILL_COOLDOWN_MINUTES", "x", "number of minutes"),
        ("AUTO_BACKFILL_COOLDOWN_SUCCESS_MS", "1e", "number of milliseconds"),
        ("AUTO_BACKFILL_ATTEMPT_BACKOFF_MS", "soon", "number of milliseconds"),
        ("AUTO_BACKFILL_LEASE_MS", "10", "at least 1000"),
        ("AUTO_BACKFILL_MAX_ACCOUNTS_PER_TICK", "0", "integer >= 1"),
        ("WHATSAPP_BACKFILL_CONCURRENCY", "100", "integer from 1 to 64"),
        ("AUTO_BACKFILL_MAX_CONCURRENCY", "x", "integer from 1 to 64"),
        ("WHATSAPP_BACKFILL_THREADS", "-1", "integer >= 1"),
        ("WHATSAPP_BACKFILL_COUNT", "1.5", "integer >= 1"),
        ("WHATSAPP_BACKFILL_MESSAGES_PER_THREAD", "51", "integer from 1 to 50"),
        ("WHATSAPP_BACKFILL_MAX_DAYS", "0", "integer >= 1"),
        ("RECENT_SYNC_ENABLED", "y", "true/false"),
        ("RECENT_SYNC_INTERVAL_MS", "5", "at least 1000"),
        ("RECENT_SYNC_LOOKBACK_MS", "nope", "milliseconds"),
        ("RECENT_SYNC_MAX_THREADS", "0", "integer >= 1"),
        ("RECENT_SYNC_MAX_MESSAGES_PER_THREAD", "0", "integer from 1 to 50"),
        ("RECENT_SYNC_MAX_CONCURRENCY", "0", "integer from 1 to 64"),
        ("RECENT_SYNC_LEASE_MS", "1", "at least 1000"),
        ("AUTO_REPAIR_THREADS_ENABLED", "sure", "true/false"),
        ("AUTO_REPAIR_THREADS_LIMIT_PER_RUN", "0", "integer >= 1"),
        ("AUTO_REPAIR_COOLDOWN_MINUTES", "-1", "at least 0"),
        ("WHATSAPP_DEGRADED_AFTER_MS", "10", "at least 1000"),
        ("REPAIR_ALERT_WEBHOOK_URL", "ftp://x", "http:// or https://"),
        ("HOST", "  ", None),  # blank counts as unset, not an error
    ],
)
def test_bad_values_name_the_variable(name, raw, expected_words):
    if expected_words is None:
        load({name: raw})
        return
    with pytest.raises(ConfigError) as err:
        load({name: raw})
    [line] = err.value.problems
    assert line.startswith(f"{name}=")
    assert expected_words in line


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load({"PORT": "x", "WASYNC_STORE": "y"})
    assert [p.split("=")[0] for p in err.value.problems] == ["PORT", "WASYNC_STORE"]


def test_secret_values_never_echoed_in_errors():
    with pytest.raises(ConfigError) as err:
        load({"SESSIONS_DSN": "mysql://root:hunter2@db/x"})
    assert "hunter2" not in str(err.value)


def test_serving_requires_token_off_loopback():
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        load({"HOST": "0.0.0.0"}).require_serving()
    load({"HOST": "0.0.0.0", "ADMIN_TOKEN": "t"}).require_serving()
    load({"HOST": "::1"}).require_serving()
    load({"HOST": "localhost"}).require_serving()


def test_emulator_needs_project():
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        load({"WASYNC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"}).require_serving()


def test_print_config_masks_secrets():
    out = io.StringIO()
    env = {"ADMIN_TOKEN": "s3cret", "SESSIONS_DSN": "postgres://wa:pw123@db:5432/wa",
           "FIREBASE_SERVICE_ACCOUNT_JSON": '{"private_key": "KEY"}',
           "REPAIR_ALERT_WEBHOOK_URL": "https://hooks.example/T0/B0/abc", "PORT": "9000",
           "AUTO_BACKFILL_INTERVAL_MS": "60000"}
    assert config.print_config(env, out=out) == 0
    text = out.getvalue()
    for secret in ("s3cret", "pw123", "KEY", "abc"):
        assert secret not in text
    assert "postgres://wa:***@db:5432/wa" in text
    assert "port=9000  [env PORT]" in text
    assert "backfill_interval_ms=60000  [legacy AUTO_BACKFILL_INTERVAL_MS]" in text


def _wasync(*args, env):
    return subprocess.run([sys.executable, "-m", "wasync.runtime.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_config_ok_and_bad_port():
    import os

    base = {k: v for k, v in os.environ.items() if k != "PORT"}
    ok = _wasync("config", env=base)
    assert ok.returncode == 0 and "PORT" in ok.stdout
    bad = _wasync("config", env={**base, "PORT": "abc"})
    assert bad.returncode == 2
    assert "PORT='abc'" in bad.stderr and "expected an integer" in bad.stderr


def test_run_refuses_a_public_host_without_a_token(tmp_path):
    import os

    env = {**os.environ, "HOST": "0.0.0.0", "WASYNC_DATA_DIR": str(tmp_path)}
    env.pop("ADMIN_TOKEN", None)
    result = _wasync("run", env=env)
    assert result.returncode == 2
    assert "ADMIN_TOKEN" in result.stderr and "0.0.0.0" in result.stderr
    assert not (tmp_path / "wasync.db").exists()  # it stopped before touching anything
