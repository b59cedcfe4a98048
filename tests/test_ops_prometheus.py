"""The Prometheus and Grafana files under ops/: the alert rules and their promtool unit
tests, the example scrape configuration, the dashboard, checked with promtool and against
what the daemon really exports (a `Metrics()` registry, and the /metrics of a running
`wasync run`, linted by `promtool check metrics`).

promtool comes with Debian's prometheus package (`make test` installs it); the tests that
run it are skipped without it."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from daemonproc import ROOT, DaemonProcess
from simproc import SimProcess, wait_for
from wasync.runtime.alerts import Alerts
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics

PROMETHEUS = ROOT / "ops" / "prometheus"
RULES = PROMETHEUS / "wasync-rules.yml"
RULE_TESTS = PROMETHEUS / "wasync-rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "wasync.json"
RUNBOOK = ROOT / "ops" / "RUNBOOK.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's `prometheus` package; `make test` installs it)")

# Labels Prometheus attaches to every scraped series. A metric's own label of the same
# name is renamed `exported_<name>` at scrape time (honor_labels is false by default).
TARGET_LABELS = {"job", "instance"}


def promtool(*args: str, stdin: bytes | None = None, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, cwd=cwd, timeout=60)


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels of a collapsed row
    return out


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(panel title, expression, legend format) of every panel target."""
    return [(p["title"], t["expr"], t.get("legendFormat", "")) for p in dashboard_panels() for t in p.get("targets", [])]


# --- what the daemon exports ----------------------------------------------------------------


def exported_series() -> dict[str, set[str]]:
    """Every series name a scrape of the daemon can hold, with the label names Prometheus
    stores it under: the families of a real `Metrics()` registry (counters as `_total`,
    histograms as `_bucket`/`_sum`/`_count`), labelled metrics included before any label
    value is set, plus the scrape's own `up`."""
    metrics = Metrics()
    metrics.watch_alerts(Alerts("ops-test", None, clock=Clock()))
    declared: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():  # labelled metrics without a child yet have no samples
        if hasattr(wrapper, "_labelnames") and hasattr(wrapper, "_name"):
            declared[wrapper._name] = set(wrapper._labelnames)
    out: dict[str, set[str]] = {"up": set(TARGET_LABELS)}
    for family in metrics.registry.collect():
        labels = declared.get(family.name, set()) | {k for s in family.samples for k in s.labels}
        labels = {f"exported_{k}" if k in TARGET_LABELS else k for k in labels}
        if family.type == "counter":
            names = {family.name + "_total": labels}
        elif family.type == "histogram":
            names = {family.name + "_bucket": labels | {"le"}, family.name + "_sum": labels,
                     family.name + "_count": labels}
        elif family.type == "summary":
            names = {family.name: labels | {"quantile"}, family.name + "_sum": labels, family.name + "_count": labels}
        elif family.type == "info":
            names = {family.name + "_info": labels}
        else:
            names = {family.name: labels}
        for name, labelset in names.items():
            out[name] = labelset | TARGET_LABELS
    return out


# --- names in PromQL --------------------------------------------------------------------------

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile"}
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][\w:]*|[{}()]|[^\s\w]")


def promql_names(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The series selectors of `expr` (metric name, label names matched) and the label
    names of its by/without/on/ignoring/group_* lists."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # label values
    text = re.sub(r"\$\{?\w+(?::\w+)?\}?", "1m", text)  # Grafana variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries
    tokens = TOKEN.findall(text)
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in AGGREGATIONS and nxt in ("by", "without"):  # sum by (x) (...)
            i += 1
        elif tok in LABEL_LIST_KEYWORDS and nxt == "(":
            close = tokens.index(")", i)
            grouping |= {t for t in tokens[i + 2:close] if re.fullmatch(r"[A-Za-z_]\w*", t)}
            i = close + 1
        elif tok == "{" or re.fullmatch(r"[A-Za-z_:][\w:]*", tok) and tok not in KEYWORDS and nxt != "(":
            name = "" if tok == "{" else tok
            labels: set[str] = set()
            j = i if tok == "{" else i + 1
            if j < len(tokens) and tokens[j] == "{":
                close = tokens.index("}", j)
                inner = tokens[j + 1:close]
                labels = {t for k, t in enumerate(inner) if re.fullmatch(r"[A-Za-z_]\w*", t)
                          and k + 1 < len(inner) and inner[k + 1] in "=!"}
                j = close
            assert name or "__name__" in labels, f"a selector without a metric name in {expr!r}"
            selectors.append((name, labels))
            i = j + 1
        elif re.fullmatch(r"[A-Za-z_]\w*", tok) and nxt == "(":
            assert tok in FUNCTIONS, f"unknown PromQL function {tok!r} in {expr!r}"
            i += 1
        else:
            i += 1
    return selectors, grouping


def test_the_promql_name_parser():
    selectors, grouping = promql_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(wasync_http_request_seconds_bucket{job="$job", '
        'instance=~"$instance"}[$__rate_interval]))) > 1e3 and on (instance) up offset 15m '
        'unless max without (reason) (increase(x_total{reason!~"a|b"}[15m]))')
    assert selectors == [("wasync_http_request_seconds_bucket", {"job", "instance"}), ("up", set()),
                         ("x_total", {"reason"})]
    assert grouping == {"le", "route", "instance", "reason"}


def check_expression(where: str, expr: str, exported: dict[str, set[str]], legend: str = "") -> list[str]:
    problems = []
    selectors, grouping = promql_names(expr)
    available: set[str] = set()
    for name, labels in selectors:
        if name not in exported:
            problems.append(f"{where}: {name} is not a series the daemon exports")
            continue
        available |= exported[name]
        for label in labels - exported[name]:
            problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(exported[name])})")
    for label in grouping - available:
        problems.append(f"{where}: grouping label {label!r} is on none of {[n for n, _ in selectors]}")
    for label in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - available:
        problems.append(f"{where}: legend label {label!r} is on none of {[n for n, _ in selectors]}")
    return problems


def test_rules_and_dashboard_use_only_what_the_daemon_exports():
    exported = exported_series()
    problems = []
    for name, rule in alert_rules().items():
        problems += check_expression(f"alert {name}", rule["expr"], exported)
        selectors = promql_names(rule["expr"])[0]
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if not any(label in exported.get(n, ()) for n, _ in selectors):
                    problems.append(f"alert {name}: annotation uses $labels.{label}, on none of its metrics")
    for title, expr, legend in dashboard_exprs():
        problems += check_expression(f"panel {title!r}", expr, exported, legend)
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
            assert found, var["query"]
            problems += check_expression(f"variable {var['name']}", found.group(1), exported,
                                         "{{%s}}" % found.group(2))
    assert not problems, "\n".join(problems)


# --- rules ---------------------------------------------------------------------------------------


@needs_promtool
def test_rules_pass_promtool_check_and_their_unit_tests():
    check = promtool("check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    unit = promtool("test", "rules", RULE_TESTS.name)
    assert unit.returncode == 0, unit.stdout.decode() + unit.stderr.decode()


@needs_promtool
def test_scrape_config_passes_promtool_with_its_rules():
    result = promtool("check", "config", SCRAPE_CONFIG.name)
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out and "wasync-rules.yml" in out, out
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "wasync")
    assert config["global"]["scrape_interval"] == "15s" and len(job["static_configs"]) >= 2


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases: dict[str, list[list]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for name in alert_rules():
        assert any(cases.get(name, [])), f"{name}: no unit test where it fires"
        assert any(not exp for exp in cases.get(name, [])), f"{name}: no unit test where it must stay quiet"
    assert set(cases) <= set(alert_rules()), set(cases) - set(alert_rules())


def test_every_alert_says_how_long_how_bad_and_what_to_do():
    exported = exported_series()
    for name, rule in alert_rules().items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        if any("account" in exported.get(metric, ()) for metric, _ in promql_names(rule["expr"])[0]):
            assert "{{ $labels.account }}" in ann["summary"], f"{name}: the summary should name the account"
        assert ann["runbook_url"] == f"ops/RUNBOOK.md#alert-{name.lower()}", name


def test_runbook_has_an_anchor_for_every_alert():
    if not RUNBOOK.exists():
        pytest.skip("ops/RUNBOOK.md not written yet")
    text = RUNBOOK.read_text()
    # GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes.
    anchors = {re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", h.strip().lower()))
               for h in re.findall(r"^#+\s+(.+)$", text, re.M)}
    anchors |= set(re.findall(r"""(?:id|name)=["']([\w-]+)["']""", text))
    missing = [n for n in alert_rules() if f"alert-{n.lower()}" not in anchors]
    assert not missing, f"ops/RUNBOOK.md has no anchor for: {missing}"


# --- dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_importable_and_filters_by_instance():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "wasync_" in target["expr"] or "process_" in target["expr"]:
                assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


@needs_promtool
def test_dashboard_expressions_parse(tmp_path):
    """promtool parses each panel's query, the Grafana variables given values."""
    def concrete(expr: str) -> str:
        return (expr.replace("$__rate_interval", "1m").replace("${instance}", ".*").replace("$instance", ".*")
                .replace("$job", "wasync"))

    rules = [{"record": f"panel:{i}", "expr": concrete(expr)} for i, (_, expr, _) in enumerate(dashboard_exprs())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# --- a live daemon ------------------------------------------------------------------------------

PHONE = "15550001111"
CHAT = "15552223333@s.whatsapp.net"
WORLD = {"seed": 7, "accounts": [{"phone": PHONE, "paired": True, "chats": [
    {"jid": CHAT, "name": "Alice", "messages": [
        {"id": "3EB0OPS0000000000001", "ts": 1760000000, "text": "Are you open on Sunday?"},
        {"id": "3EB0OPS0000000000002", "fromMe": True, "ts": 1760000060, "text": "Yes, 8 to 14.",
         "status": "read"}]}]}]}

# Families the rules or the dashboard use that a running daemon does not serve yet, and why.
NOT_SERVED_YET: dict[str, str] = {}


@pytest.mark.slow
@needs_promtool
def test_live_metrics_pass_promtool_check_metrics(tmp_path):
    sim = SimProcess(WORLD, tmp_path / "sim").start()
    daemon = DaemonProcess(tmp_path / "daemon", {"WASYNC_TRANSPORT": sim.address})
    try:
        daemon.start()
        status, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "a1", "phone": PHONE})
        assert status == 201, body

        def connected():
            return daemon.get("/api/whatsapp/accounts/a1")[1].get("account", {}).get("status") == "connected"

        wait_for(connected, 20, "account a1 connected")
        sim.inject({"account": PHONE, "event": "message", "chat": CHAT, "text": "hi live"})
        status, body = daemon.request("POST", "/api/whatsapp/send-message",
                                      {"accountId": "a1", "to": CHAT, "text": "Your cake is ready"})
        assert status == 202, body

        def scraped():
            text = daemon.get("/metrics")[1].decode()
            return text if re.search(r'^wasync_outbox_results_total\{result="sent"\} [1-9]', text, re.M) \
                and re.search(r'^wasync_messages_ingested_total\{source="realtime",type="text"\} [1-9]', text, re.M) \
                else None

        text = wait_for(scraped, 20, "the live message stored and the outbox message sent")
    finally:
        daemon.stop()
        sim.stop()
    (tmp_path / "metrics.txt").write_text(text)

    lint = promtool("check", "metrics", stdin=text.encode(), cwd=tmp_path)
    problems = (lint.stdout.decode() + lint.stderr.decode()).strip()
    assert lint.returncode == 0 and not problems, f"promtool check metrics (exit {lint.returncode}):\n{problems}"

    served = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    names = {n + "_total" if t == "counter" and not n.endswith("_total") else n for n, t in served}
    names |= {n + suffix for n, t in served if t == "histogram" for suffix in ("_bucket", "_sum", "_count")}
    used = {name for rule in alert_rules().values() for name, _ in promql_names(rule["expr"])[0]}
    used |= {name for _, expr, _ in dashboard_exprs() for name, _ in promql_names(expr)[0]}
    missing = used - names - {"up"}
    assert missing <= set(NOT_SERVED_YET), f"used by ops/ but not served by wasync run: {sorted(missing)}"
