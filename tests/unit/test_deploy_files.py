"""The deployment files parse and agree with each other and with the service's metrics.

No Docker engine is needed: docker-compose.yml, the Prometheus configuration and rules and the
Grafana provisioning are read as YAML/JSON, every bind-mounted path must exist in the repository,
and every PromQL expression may use only the metric names the service exposes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "perimeter.json"

# What GET /metrics exposes (bot/metrics.py). Counters appear with _total, histograms as
# _bucket/_sum/_count series.
COUNTERS = {"perimeter_answers_total", "perimeter_escalations_total", "perimeter_tokens_total",
            "perimeter_errors_total", "perimeter_job_runs_total"}
HISTOGRAMS = {"perimeter_stage_seconds"}
GAUGES = {"perimeter_model_queue_depth", "perimeter_model_in_flight", "perimeter_inbound_events",
          "perimeter_outbox", "perimeter_tickets_open", "perimeter_crm_circuit_state",
          "perimeter_model_circuit_state"}
KNOWN = COUNTERS | GAUGES | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
BUILTIN = {"up"}  # set by Prometheus for every target
STAGES = {"retrieval", "crm", "model_queue", "model_ttft", "model_total", "delivery", "total"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# --- PromQL -------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label matchers,
    ranges, grouping label lists, functions and keywords are taken out."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings (label values, regexes)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries: [5m], [$__rate_interval], [15m:1m]
    s = _GROUPING.sub(" ", s)  # by (le, stage), on (), ...
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables outside ranges
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in _KEYWORDS:
            continue
        names.add(ident)
    return names


def unknown_metrics(expr: str) -> set[str]:
    return {n for n in metric_names(expr) if n not in KNOWN | BUILTIN}


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(perimeter_stage_seconds_bucket'
            '{stage="total",instance=~"$instance"}[$__rate_interval]))) > 10 and on() up{job="perimeter"} == 1')
    assert metric_names(expr) == {"perimeter_stage_seconds_bucket", "up"}
    assert unknown_metrics("sum(rate(perimeter_answer_total[5m])) / sum(rate(perimeter_tokens_total[5m]))") == {
        "perimeter_answer_total"}
    assert unknown_metrics("rate(perimeter_stage_seconds[5m])") == {"perimeter_stage_seconds"}
    assert unknown_metrics("process_cpu_seconds_total") == {"process_cpu_seconds_total"}


def _perimeter_names_ok(expr: str) -> bool:
    """The brief's rule, kept independent of the tokenizer above: every perimeter_* name is known."""
    return all(n in KNOWN for n in re.findall(r"perimeter_[a-z_]+", expr))


# --- docker-compose.yml ------------------------------------------------------------------------


def _profiles(service: dict[str, Any]) -> list[str]:
    return list(service.get("profiles") or [])


def test_compose_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("migrate", "app", "qdrant", "ollama", "ollama-pull", "postgres"):
        assert name in services, name
    for name in ("migrate", "app", "qdrant", "ollama", "postgres"):  # the default stack stays profile-free
        assert not _profiles(services[name]), name
    assert _profiles(services["ollama-pull"]) == ["setup"]
    assert _profiles(services["prometheus"]) == ["monitoring"]
    assert _profiles(services["grafana"]) == ["monitoring"]
    assert "redis" not in services  # replicas agree through PostgreSQL; nothing would use it
    assert _profiles(services["app-2"]) == ["replicas"]
    assert "docker compose --profile monitoring up -d" in COMPOSE.read_text(encoding="utf-8")


def test_compose_monitoring_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for svc, repo in ((prometheus, "prom/prometheus:"), (grafana, "grafana/grafana-oss:")):
        image = svc["image"]
        assert image.startswith(repo)
        assert image.split(":", 1)[1] not in ("", "latest"), f"{image} is not pinned"
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert _bind_source(prometheus, "/etc/prometheus/prometheus.yml") == PROMETHEUS
    assert _bind_source(prometheus, "/etc/prometheus/alerts.yml") == ALERTS
    assert "GRAFANA_ADMIN_PASSWORD" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    volumes = set(compose["volumes"])
    for svc, target in ((prometheus, "/prometheus"), (grafana, "/var/lib/grafana")):
        named = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == target]
        assert named and named[0] in volumes, target


def test_compose_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app, app2 = services["app"], services["app-2"]
    assert app2["image"] == app["image"] and app2["command"] == app["command"] == ["serve"]
    assert {k: v for k, v in app2["environment"].items() if k != "PERIMETER_HTTP_PORT"} == app["environment"]
    assert str(app2["environment"]["PERIMETER_HTTP_PORT"]) == "8080"
    assert app2["ports"] != app["ports"], "the replicas need different host ports"
    assert app["ports"] == ["127.0.0.1:8080:8080"]


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of the service's bind mounts (sources starting with . or /)."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                mounts.append((vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _bind_source(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a container path of the service comes from, through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for source, target in _bind_mounts(service):
        t = PurePosixPath(target)
        if wanted == t or t in wanted.parents:
            return (ROOT / source / wanted.relative_to(t)).resolve()
    return None


def test_every_bind_mount_exists(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        for source, _target in _bind_mounts(service):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
                checked += 1
    assert checked >= 4


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_scrapes_the_app_and_loads_the_rules() -> None:
    config = _yaml(PROMETHEUS)
    assert "alerts.yml" in config["rule_files"]
    assert (PROMETHEUS.parent / "alerts.yml").exists()
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "perimeter")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    interval = job.get("scrape_interval", config["global"]["scrape_interval"])
    assert interval == "15s"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert "app:8080" in targets and "app-2:8080" in targets


def test_alert_rules_use_known_metrics() -> None:
    rules = [r for group in _yaml(ALERTS)["groups"] for r in group["rules"]]
    names = {r["alert"] for r in rules}
    for expected in ("PerimeterDown", "PerimeterSlowAnswers", "PerimeterEscalationShareHigh",
                     "PerimeterModelCircuitOpen", "PerimeterCrmCircuitOpen", "PerimeterInboundBacklogGrowing",
                     "PerimeterOutboxFailed"):
        assert expected in names, expected
    for rule in rules:
        expr = rule["expr"]
        assert _perimeter_names_ok(expr), rule["alert"]
        assert not unknown_metrics(expr), (rule["alert"], unknown_metrics(expr))
        assert metric_names(expr), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    slow = next(r for r in rules if r["alert"] == "PerimeterSlowAnswers")
    assert "histogram_quantile(0.95" in slow["expr"] and "> 10" in slow["expr"] and slow["for"] == "10m"


# --- Grafana -----------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_existing_files(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    datasources = _bind_source(grafana, "/etc/grafana/provisioning/datasources")
    providers = _bind_source(grafana, "/etc/grafana/provisioning/dashboards")
    assert datasources == (GRAFANA / "provisioning" / "datasources").resolve()
    assert providers == (GRAFANA / "provisioning" / "dashboards").resolve()

    (ds,) = _yaml(datasources / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"

    (provider,) = _yaml(providers / "perimeter.yml")["providers"]
    folder = _bind_source(grafana, provider["options"]["path"])
    assert folder is not None and (folder / "perimeter.json").resolve() == DASHBOARD.resolve()
    home = _bind_source(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == DASHBOARD.resolve()


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "perimeter"
    assert dashboard["title"] == "Perimeter"
    assert dashboard["schemaVersion"] >= 39
    ids = [p["id"] for p in _all_panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_are_described_and_placed(dashboard: dict[str, Any]) -> None:
    for panel in _all_panels(dashboard):
        assert re.search("[А-Яа-яЁё]", panel["title"]), f"{panel['title']}: the title is Russian"
        if panel["type"] != "row":
            assert panel["description"].isascii(), f"{panel['title']}: the description is English"
            assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_dashboard_promql_uses_known_metrics(dashboard: dict[str, Any]) -> None:
    seen: set[str] = set()
    for panel in _all_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert _perimeter_names_ok(expr), (panel["title"], expr)
            assert not unknown_metrics(expr), (panel["title"], unknown_metrics(expr))
            seen |= metric_names(expr)
            # rate()/increase() only over counters and histogram series, never over a gauge
            for inner in re.findall(r"\b(?:rate|increase)\(\s*([a-z_]+)", expr):
                assert inner in COUNTERS or inner.endswith(("_bucket", "_sum", "_count")), (panel["title"], expr)
            if "histogram_quantile" in expr:
                assert re.search(r"sum by \(le(, stage)?\) \(rate\(perimeter_stage_seconds_bucket", expr), expr
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(metric, label)
            metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert metric and metric.group(1) in KNOWN, variable["name"]
    assert seen - BUILTIN == KNOWN, "every metric the service exposes is on the dashboard"


def test_dashboard_covers_every_stage_and_the_circuit_states(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for p in _all_panels(dashboard) for t in p.get("targets", [])]
    for stage in STAGES:
        quantiles = {q for e in exprs if f'stage="{stage}"' in e
                     for q in re.findall(r"histogram_quantile\((0\.\d+)", e)}
        assert {"0.5", "0.95", "0.99"} <= quantiles, stage
    circuits = [p for p in _all_panels(dashboard)
                if p["type"] == "stat" and "circuit_state" in p["targets"][0]["expr"]]
    assert len(circuits) == 2
    for panel in circuits:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert {k: v["text"] for k, v in mapping["options"].items()} == {
            "0": "closed", "1": "half-open", "2": "open"}
        assert [mapping["options"][k]["color"] for k in "012"] == ["green", "yellow", "red"]
